"""mgvsr: fast multigrid training of video super-resolution models."""

__version__ = "0.1.0"
