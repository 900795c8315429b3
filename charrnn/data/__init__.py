"""The data layer: the corpus (downloaded and checked, or a local file), its character
vocabulary, the contiguous train/val/test split, training windows and the memory-mapped cache.

May import charrnn.errors and host only."""
