"""The studies layer: what spans many runs. Sweep summaries, the Optuna search and its report,
gradient-distance comparisons of trained runs, the speakers analysis.

May import every layer below: charrnn.errors, data, models, generation, training."""
