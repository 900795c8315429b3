"""The models layer: every architecture behind `model.cell` (registry.py), each mapping
characters (B, T) to next-character logits (B, T, V) through one shared interface. Plain torch.

May import charrnn.errors, host and the data layer; never Lightning."""
