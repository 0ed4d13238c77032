"""Training: the fit loop, checkpoints, DDP, job configuration, the train job and the N:M phase."""
