"""The node-side trainer of each objective (sdk.objectives names each by import path): (TrainerInputs) ->
(trainer, packing note or None)."""
