"""vqclip: VQGAN-CLIP art from the command line."""

__version__ = "0.1.0"
