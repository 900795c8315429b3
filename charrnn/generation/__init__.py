"""The generation layer: a checkpoint loaded safely, temperature sampling, scoring and dynamic
evaluation. A model and its vocabulary are all it needs. Plain torch.

May import charrnn.errors, host, data and models; never Lightning."""
