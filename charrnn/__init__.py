"""charrnn: character-level text generation with a vanilla RNN."""

__version__ = "0.1.0"
