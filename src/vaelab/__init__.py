"""vaelab: configurable experiments with Variational Autoencoders."""

__version__ = "0.1.0"
