"""The node's tools on a finished run, each `python -m launch.tools.<name>`: merge, generate, eval_run,
serve (with its auth middleware and idle-stop watcher)."""
