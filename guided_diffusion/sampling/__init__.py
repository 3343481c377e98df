"""Sampling: the samplers over D(x; sigma), their dispatch, what the sampling scripts share, sample files."""
