"""Compare how far back gradients reach in trained runs:

    python -m charrnn.studies.diagnostics RUN [RUN ...] --out curves.png [--hidden]

draws each run's gradient-distance curve (charrnn.training.vanishing) on its own validation
batch, from its best checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from charrnn.data.datamodule import CharDataModule
from charrnn.errors import CharRNNError
from charrnn.generation.loading import load_model
from charrnn.training.run_folder import resolve_checkpoint
from charrnn.training.vanishing import (
    DISTANCES,
    HIDDEN_LABEL,
    INPUT_LABEL,
    hidden_state_gradients,
    input_gradients,
    plot_distance_curves,
)


def compare_runs(runs: list[Path], out: Path, batch_size: int = 32,
                 hidden: bool = False) -> dict[str, torch.Tensor]:
    """The gradient-distance curve of each run's best checkpoint on its own validation batch:
    with respect to the input (every cell), or the hidden state (`hidden`: recurrent runs)."""
    curves = {}
    for run in runs:
        if not (run / "config.yaml").is_file():
            raise CharRNNError(f"{run} is not a run folder (no config.yaml in it): give folders "
                               "train.py wrote, e.g. outputs/2026-01-01/12-00-00.")
        model, _ = load_model(resolve_checkpoint(run, "best", key="run"))
        cfg = OmegaConf.load(run / "config.yaml")
        if hidden and not model.recurrent:
            print(f"{run}: model.cell={cfg.model.cell} has no hidden state; left out")
            continue
        dm = CharDataModule(**cfg.data)
        dm.setup()
        x, y = next(iter(dm.val_dataloader()))
        steps = torch.load(resolve_checkpoint(run, "best"), weights_only=True)["global_step"]
        size = sum(p.numel() for p in model.parameters())
        label = f"{cfg.model.cell} ({size:,} parameters, {steps} steps)"
        measure = hidden_state_gradients if hidden else input_gradients
        curves[label] = measure(model, x[:batch_size], y[:batch_size])
    what = HIDDEN_LABEL if hidden else INPUT_LABEL
    fig = plot_distance_curves(curves, f"{what}, validation batch", what)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return curves


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Compare how far back gradients reach in trained runs (best checkpoints): "
        "||dL_T/dx_{T-k}|| with respect to the input, for every cell."
    )
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--hidden", action="store_true",
                        help="||dL_T/dh_{T-k}|| with respect to the hidden state instead "
                        "(recurrent cells only)")
    args = parser.parse_args(argv)
    try:
        curves = compare_runs(args.runs, args.out, hidden=args.hidden)
    except CharRNNError as err:  # a folder that is not a run
        parser.exit(2, f"error: {err}\n")
    print("run" + "".join(f" | k={k}" for k in DISTANCES))
    for label, curve in curves.items():
        print(label + "".join(f" | {curve[k]:.3g}" for k in DISTANCES if k < len(curve)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
