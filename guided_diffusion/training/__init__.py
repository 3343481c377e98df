"""Training: the classifier loop, checkpoint state and resuming, post-hoc EMA, latent datasets."""
