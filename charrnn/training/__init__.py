"""The training layer, on Lightning: the LightningModule, the Trainer, one run from config to
metrics.json (run.py), its callbacks, gradient monitors, precision, the run folder, profiling.

May import charrnn.errors, host, data, models and generation; nothing of studies."""
