"""Magnitude-preserving layers, the EDM2 U-Net and its preconditioning, and the paper's presets (no I/O)."""
