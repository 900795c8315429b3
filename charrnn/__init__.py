"""charrnn: character-level text generation with a vanilla RNN.

The package is layered; each folder may import only the ones before it in this list:

    errors.py     CharRNNError and the checks of settings (imports nothing of charrnn)
    data/         corpus, vocabulary, split, windows, cache
    models/       every `model.cell` behind one interface (plain torch)
    generation/   checkpoint loading, sampling, scoring, dynamic evaluation (a model is enough)
    training/     Lightning: module, Trainer, one run, callbacks, the run folder
    studies/      many runs: sweep summaries, search, diagnostics, speakers, counting
    serve/        the generation page (the only layer that imports a web library)
    cli.py, bench/, gpu_checks.py   what the entry points and tools share (may import all)

report.py, diagnostics.py and speakers.py keep `python -m charrnn.<name>` working: they run
charrnn.studies.<name>. tests/test_layers.py keeps the order.
"""

__version__ = "0.1.0"
