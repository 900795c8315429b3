"""Sweep summaries: one row per job (overrides + metrics), a Markdown/CSV table and a plot.

    python -m charrnn.studies.report outputs/multirun/2026-11-27/10-00-00

runs by itself after every `train.py -m` or `generate.py -m` sweep (a Hydra callback), and on
demand for any sweep folder. Jobs that failed are listed as failed, with their error.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback as HydraCallback

from charrnn.errors import CharRNNError
from charrnn.training.run_folder import ERROR_FILE, METRICS_FILE

# Metrics shown, when present (training sweeps, then generation's sample and score sweeps).
PREFERRED = ("test_ppl", "best_val_ppl", "best_epoch", "epochs_run", "early_stopped",
             "train_chars_per_s", "wall_time_s", "parameters", "sample_ppl", "distinct_words",
             "ppl", "loss", "characters_scored")
PRIMARY = ("test_ppl", "sample_ppl", "ppl")  # the metric rows are sorted and plotted by
SUMMARY_FILES = ("summary.md", "summary.csv", "summary.png")


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one line per event file
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder (a folder holding .hydra/overrides.yaml), best test ppl first."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides)}
        row["swept"] = dict(o.split("=", 1) for o in overrides if "=" in o)
        if (job / METRICS_FILE).is_file():
            row.update(json.loads((job / METRICS_FILE).read_text()), status="ok")
        elif (job / ERROR_FILE).is_file():
            row.update(status="failed", error=(job / ERROR_FILE).read_text().strip())
        else:
            row.update(status="unfinished")
        rows.append(row)
    primary = primary_metric(rows)
    return sorted(rows, key=lambda r: (r["status"] != "ok", r.get(primary) or math.inf))


def primary_metric(rows: list[dict[str, Any]]) -> str:
    return next((m for m in PRIMARY if any(m in r for r in rows)), PRIMARY[0])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fixed_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every job of the sweep has (the command's fixed settings)."""
    sets = [set(r["overrides"].split()) for r in rows]
    return sorted(set.intersection(*sets)) if len(sets) > 1 else []


def write_tables(rows: list[dict[str, Any]], sweep_dir: Path) -> None:
    """summary.csv (every job's overrides in full) and summary.md (the settings common to every
    job once, above the table; each job's own in it)."""
    present = [c for c in PREFERRED if any(c in r for r in rows)]
    header = ["job", "status", "overrides", *present, "error"]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.get(c, "") for c in header])
    fixed = fixed_overrides(rows)
    lines = [f"Every job: `{' '.join(fixed)}`", ""] if fixed else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        error = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")
        own = " ".join(o for o in r["overrides"].split() if o not in fixed)
        cells = [r["job"], r["status"], f"`{own}`" if own else "", *(_cell(r.get(c))
                                                                     for c in present),
                 error[:200]]
        lines.append("| " + " | ".join(cells) + " |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")


def write_plot(rows: list[dict[str, Any]], sweep_dir: Path) -> None:
    """Left: test perplexity against the swept value(s). Right: validation curves overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = [r for r in rows if r["status"] == "ok"]
    primary = primary_metric(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    keys = sorted({k for r in ok for k in r["swept"]})
    varying = [k for k in keys if len({r["swept"].get(k) for r in ok}) > 1]
    if len(varying) == 1 and all(_is_number(r["swept"].get(varying[0])) for r in ok):
        key = varying[0]
        points = sorted((float(r["swept"][key]), r[primary]) for r in ok)
        left.plot(*zip(*points), marker="o")
        left.set_xlabel(key)
        xs = [p[0] for p in points]
        if min(xs) > 0 and max(xs) / min(xs) >= 8:
            left.set_xscale("log", base=2)
    else:
        labels = [" ".join(f"{k}={r['swept'][k]}" for k in varying) or r["job"] for r in ok]
        left.barh(range(len(ok)), [r[primary] for r in ok], tick_label=labels)
        left.invert_yaxis()
    left.set_ylabel(primary if left.get_xlabel() else "")
    left.set_title(primary)
    for r in ok:
        curve = read_scalars(sweep_dir / r["job"]).get("val/ppl", [])
        if curve:
            label = " ".join(f"{k}={r['swept'][k]}" for k in varying) or r["job"]
            right.plot(range(1, len(curve) + 1), [v for _, v in curve], label=label,
                       marker="o" if len(curve) < 4 else None)  # one epoch: a point, no line
    if not right.lines:
        right.set_axis_off()
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("epoch")
    right.set_ylabel("validation perplexity")
    right.set_yscale("log")
    right.set_title("validation curves")
    if right.lines:
        right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(sweep_dir / "summary.png")
    plt.close(fig)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write summary.md, summary.csv and summary.png into the sweep folder; print the table.
    A search's folder (storage.json, or study.db from before it) gets the search's summary."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / "storage.json").is_file() or (sweep_dir / "study.db").is_file():
        from charrnn.studies.search_report import summarize_search

        return summarize_search(sweep_dir)
    rows = job_rows(sweep_dir)
    if not rows:
        raise SystemExit(f"error: no job folders (with .hydra/overrides.yaml) in {sweep_dir}")
    write_tables(rows, sweep_dir)
    write_plot(rows, sweep_dir)
    print((sweep_dir / "summary.md").read_text())
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} jobs finished; summary in {sweep_dir}/"
          f"{{{','.join(SUMMARY_FILES)}}}")
    return rows


class SweepSummary(HydraCallback):
    """Hydra callback: summarize the sweep when a multirun ends; exit 1 if a job failed. With
    MLflow among the loggers, the sweep is a parent run that every job's run is a child of,
    opened at the start and given the summary at the end."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from charrnn.training.trackers import start_sweep  # Lightning: not in generate.py's

        try:
            start_sweep(config)
        except CharRNNError as err:  # an unreachable server: before any job
            print(f"\nerror: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_multirun_end(self, config, **kwargs) -> None:
        from charrnn.training.trackers import end_sweep

        rows = summarize(config.hydra.sweep.dir)
        failed = any(r.get("status", "ok") != "ok" for r in rows)
        folder = Path(config.hydra.sweep.dir)
        end_sweep(config, sorted(folder.glob("summary.*")), failed)
        # A grid sweep fails if a job did; a search goes on past failed trials by design.
        if failed:
            raise SystemExit(1)


def plot_curves(sweep_dir: Path, tags: list[str], out: Path) -> None:
    """Step curves of the given TensorBoard scalars, one panel per tag, one line per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = job_rows(sweep_dir)
    varying = [k for k in sorted({k for r in rows for k in r["swept"]})
               if len({r["swept"].get(k) for r in rows}) > 1]
    fig, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 3.8), dpi=100, squeeze=False)
    for row in rows:
        logged = read_scalars(sweep_dir / row["job"])
        label = " ".join(f"{k}={row['swept'][k]}" for k in varying) or row["job"]
        for ax, tag in zip(axes[0], tags):
            points = logged.get(tag, [])
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=label, lw=0.8,
                        marker="o" if len(points) < 4 else None)
    for ax, tag in zip(axes[0], tags):
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Summarize a train.py -m or generate.py -m sweep folder, or a search's."
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--curves", nargs="+", metavar="TAG",
                        help="also plot these TensorBoard scalars per step (e.g. train/loss)")
    parser.add_argument("--out", type=Path, help="PNG for --curves (default: SWEEP/curves.png)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder: give a sweep folder, e.g. "
                     "outputs/multirun/2026-01-01/12-00-00")
    summarize(args.sweep_dir)
    if args.curves:
        out = args.out or args.sweep_dir / "curves.png"
        plot_curves(args.sweep_dir, args.curves, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
