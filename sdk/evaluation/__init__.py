"""Judging generations: metrics of an answer against a reference (metrics.py). Shared by the node (after training)
and the client (compare); no torch here."""
