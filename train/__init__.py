"""Data, models, the training loop, checkpoints and metrics."""
