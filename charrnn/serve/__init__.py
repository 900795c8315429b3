"""The serve layer: `python generate.py mode=serve`, a local web page over trained models.
Continuous batching (engine.py, plain torch), the runs a page can pick, the app and its page.

May import charrnn.errors, host, data, models, generation and the run folder's layout; the web
libraries (starlette, uvicorn) are imported here and nowhere below."""
