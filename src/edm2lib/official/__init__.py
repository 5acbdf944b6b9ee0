"""NVIDIA's released EDM2 files: a restricted unpickler (no code runs) and converters to edm2lib files."""
