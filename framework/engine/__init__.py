"""The engine: an experiment's schema, the machine it runs on, its output folder and data, the training loop, checkpoints, optimisation, processes, logs and the cost of a step."""
