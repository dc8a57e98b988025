"""Sample quality: feature extractors, KID/FID, scoring a pipeline's samples, and their tables.

`python -m denoising_diffusion.evaluate` is the command built on these modules.
"""
