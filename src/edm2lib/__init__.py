"""edm2lib: magnitude-preserving EDM2 diffusion networks, training, post-hoc EMA, sampling and metrics."""

__version__ = "0.1.0"
