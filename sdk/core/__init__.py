"""The contract both sides share: the spec and its validation, methods and objectives, precision, model
references, the planner, recipes, errors. Imports no torch and nothing from the rest of `sdk`."""
