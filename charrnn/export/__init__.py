"""The export layer: `python generate.py mode=export`, a trained run taken elsewhere, as one
self-contained HTML file (the model in plain JavaScript) or as an ONNX model.

May import every layer before it (the page's style and shared script are the serve layer's);
no web library: an exported file needs no server."""
