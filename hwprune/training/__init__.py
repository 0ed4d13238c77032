"""Training: fit loop, checkpoints, DDP, job config, the RunDir, the phases engine, train job, N:M phase."""
