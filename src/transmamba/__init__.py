"""transmamba: turn Transformers into fast Mamba-family models."""

__version__ = "0.1.0"
