"""cellsynth: generative models of single-cell RNA-seq, and an honest evaluation of their cells."""

__version__ = "0.1.0"
