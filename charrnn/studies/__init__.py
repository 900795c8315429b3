"""The studies layer: what spans many runs. Sweep summaries, the Optuna search, its storage and
report, gradient-distance comparisons of trained runs, the speakers analysis, the counting
baseline and what a model's memory holds against it.

May import every layer below: charrnn.errors, host, data, models, generation, training."""
