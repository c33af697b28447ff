"""Training and using a run: the engine (epochs, stages, checkpoints), evaluation, the trained run,
health, Shapley, TensorBoard, `gaal predict` and `gaal check-method`. Imports the layers below it."""
