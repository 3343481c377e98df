"""From a file to a network: checkpoints, NVlabs pickles, EDM2's presets, the one loader."""
