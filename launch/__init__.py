"""Node side of finetune: `python -m launch` trains from a FineTuneSpec. Imports torch & friends lazily."""
