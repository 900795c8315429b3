"""Exploding and vanishing gradients, measured while training.

- GradientMonitor: per epoch, the fraction of steps whose pre-clip gradient norm exceeded the
  clipping threshold and a histogram of those norms; stops a diverging run with a clear message
  before anything is saved from it.
- VanishingMonitor: every N steps, on a fixed validation batch, how much the loss at the last
  step still depends on what was read k steps earlier, for k = 0 .. T-1:
  ||dL_T / dx_{T-k}|| for the input representation x (every cell: one quantity to compare an
  RNN with a Transformer), and ||dL_T / dh_{T-k}|| for a recurrent cell's hidden state.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from charrnn.errors import CharRNNError, check_positive_int
from charrnn.model import CharModel, CharRNN

DISTANCES = (1, 10, 25, 50, 99)  # k logged as scalars (those below seq_length)


class TrainingDiverged(CharRNNError):
    """The training loss or gradient norm became non-finite or exploded."""


class _EvalWithGradients:
    """Eval mode (no dropout) with autograd on; restores the mode. cuDNN refuses a backward
    pass through an RNN in eval mode; PyTorch's own kernels do not (found on an H200: training
    crashed at the first measurement on a GPU)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training
        self.grad = torch.enable_grad()
        self.cudnn = torch.backends.cudnn.flags(enabled=False)

    def __enter__(self) -> None:
        self.model.eval()
        self.grad.__enter__()
        self.cudnn.__enter__()

    def __exit__(self, *exc) -> None:
        self.cudnn.__exit__(*exc)
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def input_gradients(model: CharModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||dL_T / dx_{T-k}|| for k = 0 .. T-1, averaged over the batch (index k = distance).

    L_T is each sequence's cross-entropy at its last step; x_t is the input representation of
    the character at step t (its one-hot vector or its embedding, as `model.embed` makes it).
    The same quantity for every cell; parameters get no gradients.
    """
    with _EvalWithGradients(model):
        inputs = model.embed(x).detach().requires_grad_(True)  # (B, T, D)
        logits, _ = model.forward_embedded(inputs)
        loss_last = F.cross_entropy(logits[:, -1].float(), y[:, -1], reduction="sum")
        (grad,) = torch.autograd.grad(loss_last, inputs)
    return grad.float().norm(dim=2).mean(dim=0).flip(0)  # flip: index k = T-1-t


def hidden_state_gradients(model: CharRNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||dL_T / dh_{T-k}|| for k = 0 .. T-1, averaged over the batch (index k = distance).

    L_T is each sequence's cross-entropy at its last step; h_t is the recurrent state after step t
    (every layer; for an LSTM its h, not c). The recurrence is run one step at a time so that
    each state is a tensor autograd can differentiate against; parameters get no gradients. In
    eval mode (no dropout of any kind) the model is `embed`, its recurrence and the head, so the
    recurrence alone is stepped, without a head and the model's bookkeeping at every step.
    """
    with _EvalWithGradients(model):
        inputs, state, hs = model.embed(x), None, []
        for t in range(x.shape[1]):
            _, state = model.rnn(inputs[:, t : t + 1], state)
            hs.append(state[0] if isinstance(state, tuple) else state)  # (layers, B, H)
        # The last output is the top layer of the last state: take it from there so that
        # h_T itself is in the graph (k = 0).
        logits_last = model.head(hs[-1][-1])  # (B, V)
        loss_last = F.cross_entropy(logits_last.float(), y[:, -1], reduction="sum")
        grads = torch.autograd.grad(loss_last, hs)
    # (T, B): norm over layers and units for each sequence, then the mean over the batch.
    norms = torch.stack([g.transpose(0, 1).flatten(1).norm(dim=1) for g in grads])
    return norms.mean(dim=1).flip(0)  # flip: index k = T-1-t


INPUT_LABEL = "||dL_T / dx_{T-k}||"  # the input representation: every cell
HIDDEN_LABEL = "||dL_T / dh_{T-k}||"  # the hidden state: recurrent cells


def plot_distance_curves(curves: dict[str, torch.Tensor], title: str, ylabel: str = INPUT_LABEL):
    """A matplotlib figure of a gradient against the distance k, log scale, one line a curve.

    Not made through pyplot, which keeps every figure until it is closed: a sweep's jobs run
    in one process, each with a figure of its own.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)  # renders into memory (canvas.draw, savefig)
    ax = fig.subplots()
    for label, curve in curves.items():
        ax.semilogy(range(len(curve)), curve.clamp_min(1e-30).cpu().numpy(), label=label)
    ax.set_xlabel("distance k (time steps back from the last)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _scaled(trainer) -> bool:
    """Whether a GradScaler scales the loss (16-mixed): it skips a step whose gradients overflow
    and lowers the scale, so a non-finite gradient norm there is expected, not divergence."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


class GradientMonitor(Callback):
    """Per-step train/loss and train/grad_norm, clipped-step fraction and pre-clip norm
    histogram per epoch; stops a diverging run.

    The run stops when the training loss or the gradient norm is not finite, or the loss
    exceeds `max_loss_ratio` x ln(vocabulary size) (the loss of a uniform guess, which an
    untrained model already scores); under a GradScaler (16-mixed) a step with a non-finite norm
    was skipped, not diverged. The exception is raised before the next validation, so no
    checkpoint of the diverged weights is written and the last good one stays.

    Reading a GPU tensor waits for the GPU, and Lightning's `self.log` costs a fixed time per
    call: each step's loss and norm are kept as tensors and read together every
    `check_every_n_steps` steps (and always before validation and at the epoch's end), then
    checked and written
    straight to TensorBoard (every `trainer.log_every_n_steps`, steps numbered from 0 as
    Lightning's own).
    """

    def __init__(self, max_loss_ratio: float = 3.0, check_every_n_steps: int = 20) -> None:
        self.max_loss_ratio = max_loss_ratio
        self.check_every_n_steps = check_every_n_steps
        self._norms: list[float] = []  # this epoch's, read
        self._loss_sum, self._loss_count = 0.0, 0  # this epoch's, read
        self._pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []

    def epoch_mean_loss(self) -> float | None:
        """The mean training loss of the steps read so far this epoch (progress display)."""
        return self._loss_sum / self._loss_count if self._loss_count else None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._norms, self._pending = [], []
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach()
        norm = pl_module.last_grad_norm
        norm = torch.zeros((), device=loss.device) if norm is None else norm.detach()
        self._pending.append((trainer.global_step, trainer.current_epoch, loss, norm))
        if len(self._pending) >= self.check_every_n_steps:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)  # before a checkpoint of diverged weights is written

    def _check(self, trainer, pl_module) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([torch.stack([loss for _, _, loss, _ in pending]).float(),
                              torch.stack([norm for _, _, _, norm in pending]).float()],
                             dim=1).cpu()  # (steps, 2); one sync
        losses, norms = values[:, 0], values[:, 1]
        self._norms.extend(norms.tolist())
        self._loss_sum += float(losses.sum())
        self._loss_count += len(pending)
        writer = getattr(trainer.logger, "experiment", None)
        if hasattr(writer, "add_scalar"):
            for (step, _, _, _), (loss, norm) in zip(pending, values.tolist()):
                if step % trainer.log_every_n_steps == 0:  # step: steps taken, from 1
                    writer.add_scalar("train/loss", loss, global_step=step - 1)
                    writer.add_scalar("train/grad_norm", norm, global_step=step - 1)
        limit = self.max_loss_ratio * math.log(len(pl_module.hparams.vocab))
        bad = ~(losses.isfinite() & (losses <= limit) & (norms.isfinite() | _scaled(trainer)))
        if not bad.any():
            return
        first = int(bad.nonzero()[0])
        step, epoch, _, _ = pending[first]
        loss, norm = values[first].tolist()
        clip = trainer.gradient_clip_val
        advice = (
            "Gradient clipping is off (trainer.gradient_clip_val=null): turn it on, e.g. "
            "trainer.gradient_clip_val=5.0, or lower module.lr."
            if not clip
            else f"Lower module.lr or trainer.gradient_clip_val (now {clip})."
        )
        saved = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
        saved = [path for path in saved if path]
        kept = (
            f" The last good checkpoint is kept: {saved[-1]}."
            if saved else " No checkpoint had been written yet."
        )
        raise TrainingDiverged(
            f"training diverged at step {step} (epoch {epoch + 1}): train loss {loss:.4g}, "
            f"gradient norm before clipping {norm:.4g} (the limit is a finite loss below "
            f"{limit:.3g} = {self.max_loss_ratio} x ln(vocabulary size); "
            f"gradients.max_loss_ratio). {advice}{kept}"
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)
        if not self._norms:
            return
        norms = torch.tensor(self._norms)
        norms = norms[norms.isfinite()]  # steps a GradScaler skipped (fp16) are left out
        if not len(norms):
            return
        clip = trainer.gradient_clip_val
        if clip:
            pl_module.log("train/clipped_fraction", (norms > clip).float().mean())
        if trainer.logger is not None and hasattr(trainer.logger.experiment, "add_histogram"):
            trainer.logger.experiment.add_histogram(
                "train/grad_norm_hist", norms, global_step=trainer.current_epoch
            )


class VanishingMonitor(Callback):
    """Every `every_n_steps` steps, the gradient-distance curves on a fixed validation batch:
    scalars at a few distances, and at most every `image_every_n_steps` steps one image of the
    curves (log scale). `every_n_steps=0` turns it off; `image_every_n_steps=0` leaves out the
    image.

    grad_distance_input/: ||dL_T/dx_{T-k}|| for every cell; grad_distance_hidden/:
    ||dL_T/dh_{T-k}|| as well for recurrent cells; grad_distance/curve draws both. Drawing
    costs about as much as measuring, and TensorBoard shows only 10 images of a tag unless told
    otherwise (--samples_per_plugin images=N): hence the images' own, longer interval. The
    figure is made once, when training starts (matplotlib's import and a new figure cost more
    than a measurement), and redrawn.
    """

    def __init__(self, every_n_steps: int = 250, batch_size: int = 32,
                 image_every_n_steps: int = 1000) -> None:
        for key, value in (("vanishing.every_n_steps", every_n_steps),
                           ("vanishing.image_every_n_steps", image_every_n_steps)):
            if value != 0:  # 0: off
                check_positive_int(key, value, "conf/train/train.yaml (0 turns it off)")
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.image_every_n_steps = image_every_n_steps
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._figure = None
        self._next_image_step = 0  # the first measurement draws one

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.every_n_steps and trainer.datamodule is not None:
            x, y = next(iter(trainer.datamodule.val_dataloader()))
            self._batch = (x[: self.batch_size], y[: self.batch_size])

    @rank_zero_only
    def on_train_start(self, trainer, pl_module) -> None:
        if self._batch is not None and self.image_every_n_steps:
            flat = torch.ones(self._batch[0].shape[1])
            names = ("input", "hidden") if pl_module.model.recurrent else ("input",)
            self._draw(dict.fromkeys(names, flat), trainer.global_step)

    def _curves(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        x, y = (t.to(pl_module.device) for t in self._batch)
        model = pl_module.model
        curves = {"input": input_gradients(model, x, y).cpu()}
        if model.recurrent:
            curves["hidden"] = hidden_state_gradients(model, x, y).cpu()
        return curves

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or self._batch is None or step % self.every_n_steps:
            return
        writer = getattr(trainer.logger, "experiment", None)
        if not hasattr(writer, "add_image"):
            return
        curves = self._curves(pl_module)
        for name, curve in curves.items():
            # Straight to TensorBoard: a value given to pl_module.log in this hook is logged
            # again at every later step of the epoch.
            for k in DISTANCES:
                if k < len(curve):
                    writer.add_scalar(f"grad_distance_{name}/k={k}", float(curve[k]),
                                      global_step=step)
        if self.image_every_n_steps and step >= self._next_image_step:
            writer.add_image("grad_distance/curve", self._draw(curves, step), global_step=step,
                             dataformats="HWC")
            self._next_image_step = step + self.image_every_n_steps

    def _draw(self, curves: dict[str, torch.Tensor], step: int):
        """The curves as an RGB image (H, W, 3), redrawn on one figure."""
        labels = {"input": INPUT_LABEL + " (input)", "hidden": HIDDEN_LABEL + " (hidden state)"}
        if self._figure is None:
            self._figure = plot_distance_curves(
                {labels[name]: curve for name, curve in curves.items()}, f"step {step}",
                "gradient norm")
        fig = self._figure
        ax = fig.axes[0]
        for line, curve in zip(ax.lines, curves.values()):
            line.set_data(range(len(curve)), curve.clamp_min(1e-30).numpy())
        ax.relim()
        ax.autoscale_view()
        ax.set_title(f"step {step}")
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def compare_runs(runs: list[Path], out: Path, batch_size: int = 32,
                 hidden: bool = False) -> dict[str, torch.Tensor]:
    """The gradient-distance curve of each run's best checkpoint on its own validation batch:
    with respect to the input (every cell), or the hidden state (`hidden`: recurrent runs)."""
    from omegaconf import OmegaConf

    from charrnn.checkpoints import resolve_checkpoint
    from charrnn.data import CharDataModule
    from charrnn.sampling import load_model

    curves = {}
    for run in runs:
        cfg = OmegaConf.load(run / "config.yaml")
        model, _ = load_model(resolve_checkpoint(run, "best"))
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
    curves = compare_runs(args.runs, args.out, hidden=args.hidden)
    print("run" + "".join(f" | k={k}" for k in DISTANCES))
    for label, curve in curves.items():
        print(label + "".join(f" | {curve[k]:.3g}" for k in DISTANCES if k < len(curve)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
