"""Processes: any network as a denoiser D(x; sigma), and the EDM/EDM2 training objectives."""
