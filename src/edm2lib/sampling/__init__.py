"""Sampling: the EDM Heun sampler with guidance (EDM Alg. 2) and multi-rank generation to files."""
