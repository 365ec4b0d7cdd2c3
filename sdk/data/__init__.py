"""Training data, shared by client and node: the format registry, row reading with file:line errors, the
pre-launch check, rendering to text, built-in datasets and token counting."""
