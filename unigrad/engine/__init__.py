"""The training engine: loop, resume, optimiser, checkpoints, run log, device."""
