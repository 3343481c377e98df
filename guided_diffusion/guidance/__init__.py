"""Guidance: each method as a term, and their composition."""
