"""A search's results from its study: a table of trials, the best as a command, two plots.

Written into the sweep folder when the search ends, and by
`python -m charrnn.studies.report <folder>`:
summary.md and summary.csv (one row per trial, best validation perplexity first), the best
trial's settings as a `python train.py ...` command, history.png (the optimisation history) and
importances.png (parameter importances, PED-ANOVA: no scikit-learn needed).
"""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from charrnn.studies.search import INTERRUPTED, RERUN_OF, SURPLUS
from charrnn.studies.storage import open_storage, recorded
from charrnn.training.run_folder import train_config

# Settings of a trial's own budget, not of the model it found: left at their defaults in the
# command that trains the best trial to early stopping (and never the search's own keys).
BUDGET_KEYS = ("trainer.max_epochs", "trainer.max_time", "early_stopping.patience")
SECTIONS = ("data", "model", "module", "trainer", "early_stopping", "gradients", "vanishing",
            "samples")
FILES = ("summary.md", "summary.csv", "history.png", "importances.png")


def load_study(sweep_dir: Path):
    """The study of a search folder, from wherever it lives (storage.json says)."""
    import optuna

    spec, name = recorded(sweep_dir)
    storage = open_storage(spec)
    if name is None:  # a folder from before storage.json: study.db holds its one study
        (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: its state, parameters, best val perplexity, epochs and wall time."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(SURPLUS) or t.state == TrialState.WAITING:
            continue  # asked past n_trials and never run; or queued and not run yet
        if t.state == TrialState.COMPLETE:
            best = t.value
        else:
            best = min(t.intermediate_values.values(), default=None)
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                 TrialState.FAIL: "failed", TrialState.RUNNING: "running"}.get(
                     t.state, t.state.name.lower())
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        error = t.user_attrs.get("error", "")
        if t.user_attrs.get(INTERRUPTED):
            state, error, seconds = "interrupted", "the search was stopped while it ran", None
        elif RERUN_OF in t.user_attrs:
            error = error or f"runs interrupted trial {t.user_attrs[RERUN_OF]} again"
        rows.append({
            "trial": t.number, "state": state, **{k: v for k, v in t.params.items()},
            "best_val_ppl": math.exp(best) if best is not None and best < 50 else None,
            "epochs": t.user_attrs.get("epochs", len(t.intermediate_values) or None),
            "wall_time_s": round(seconds) if seconds is not None else None,
            "folder": Path(t.user_attrs.get("job_dir", f"trial-{t.number}")).name,
            "error": error,
        })
    order = {"complete": 0, "pruned": 1, "running": 2, "failed": 3, "interrupted": 4}
    return sorted(rows, key=lambda r: (r["best_val_ppl"] is None, order.get(r["state"], 4),
                                       r["best_val_ppl"] or math.inf))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _value(value: Any) -> str:
    """A config value as Hydra reads it back from a command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and not all(c.isalnum() or c in "._-/~" for c in value):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def best_command(job_dir: Path) -> str:
    """`python train.py ...` with every setting of the trial's config.yaml that differs from
    the defaults (those that follow another key, like data.contiguous_batches, left out)."""
    default = train_config()
    trial = OmegaConf.load(job_dir / "config.yaml")
    overrides = []
    for section in SECTIONS:
        for key in _leaves(OmegaConf.to_container(default[section], resolve=False), section):
            parent, leaf = key.rsplit(".", 1)
            if key in BUDGET_KEYS or OmegaConf.is_interpolation(OmegaConf.select(default, parent),
                                                                leaf):
                continue
            old = OmegaConf.select(default, key)
            new = OmegaConf.select(trial, key, default=old)
            if new != old:
                overrides.append(f"{key}={_value(new)}")
    if trial.seed != default.seed:
        overrides.append(f"seed={trial.seed}")
    return "python train.py " + " ".join(shlex.quote(o) for o in overrides)


def write_tables(rows: list[dict[str, Any]], params: list[str], sweep_dir: Path,
                 command: str | None, fixed: list[str] = ()) -> None:
    header = ["trial", "state", *params, "best_val_ppl", "epochs", "wall_time_s", "folder",
              "error"]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.get(c, "") if r.get(c) is not None else "" for c in header])
    # Trials cut short by a stopped search are not counted: their settings ran again.
    interrupted = [r for r in rows if r["state"] == "interrupted"]
    rows = [r for r in rows if r["state"] != "interrupted"]
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    lines = [f"# Search in {sweep_dir.name}", "",
             f"{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
             f"{counts['failed']} failed. Objective: best validation loss (perplexity shown).",
             ""]
    if fixed:
        lines += [f"Every trial: `{' '.join(fixed)}`", ""]
    if command:
        lines += ["The best trial's settings, to train to early stopping:", "", "```bash",
                  command, "```", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_text(r.get(c)) for c in header]
        cells[-1] = cells[-1].replace("|", "\\|").replace("\n", " ")[:200]
        lines.append("| " + " | ".join(cells) + " |")
    if interrupted:
        lines += ["", "Interrupted when the search was stopped, not counted, and run again with "
                  f"the same settings: trial {', '.join(str(r['trial']) for r in interrupted)}."]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")


def write_plots(study, rows: list[dict[str, Any]], sweep_dir: Path) -> None:
    """history.png: each trial's best val perplexity and the best so far; importances.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colors = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red"}
    for state, color in colors.items():
        points = [(r["trial"], r["best_val_ppl"]) for r in rows
                  if r["state"] == state and r["best_val_ppl"] is not None]
        if points:
            ax.scatter(*zip(*points), color=color, label=state, s=20)
    complete = sorted((r["trial"], r["best_val_ppl"]) for r in rows if r["state"] == "complete")
    if complete:
        best, xs, ys = math.inf, [], []
        for number, ppl in complete:
            best = min(best, ppl)
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="black", lw=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation perplexity")
    ax.set_title("optimisation history")
    ax.grid(True, alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sweep_dir / "history.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    try:
        from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

        importances = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError) as err:  # too few complete trials
        importances = {}
        ax.text(0.5, 0.5, f"no importances yet: {err}", ha="center", va="center", wrap=True,
                fontsize=8)
        ax.set_axis_off()
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(sweep_dir / "importances.png")
    plt.close(fig)


def summarize_search(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write the search's summary files into its folder; print the table and the command."""
    sweep_dir = Path(sweep_dir)
    if recorded(sweep_dir) is None:
        raise SystemExit(f"error: {sweep_dir} holds no search (no storage.json or study.db)")
    study = load_study(sweep_dir)
    rows = trial_rows(study)
    params = sorted({k for t in study.get_trials(deepcopy=False) for k in t.params})
    best = next((r for r in rows if r["state"] == "complete"), None)
    command = None
    if best is not None and (sweep_dir / best["folder"] / "config.yaml").is_file():
        command = best_command(sweep_dir / best["folder"])
    write_tables(rows, params, sweep_dir, command, study.user_attrs.get("fixed", []))
    write_plots(study, rows, sweep_dir)
    print((sweep_dir / "summary.md").read_text())
    print(f"summary in {sweep_dir}/{{{','.join(FILES)}}}")
    return rows
