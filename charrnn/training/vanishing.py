"""Vanishing gradients: how much the loss at the last step of a window still depends on what
was read k steps earlier, for k = 0 .. T-1.

||dL_T / dx_{T-k}|| for the input representation x (every cell: one quantity to compare an RNN
with a Transformer), and ||dL_T / dh_{T-k}|| for a recurrent cell's hidden state. VanishingMonitor
measures it every N steps of training on a fixed validation batch; `python -m
charrnn.studies.diagnostics` compares trained runs. (Exploding gradients:
charrnn.training.gradients.)
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from charrnn.errors import check_int
from charrnn.models.registry import CharModel, CharRNN
from charrnn.training.trackers import log_image, log_scalars

DISTANCES = (1, 10, 25, 50, 99)  # k logged as scalars (those below seq_length)


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
            check_int(key, value, "conf/train/train.yaml", minimum=0, note=" (0 turns it off)")
        check_int("vanishing.batch_size", batch_size, "conf/train/train.yaml")
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
        if not trainer.loggers:
            return
        curves = self._curves(pl_module)
        # Straight to the trackers: a value given to pl_module.log in this hook is logged
        # again at every later step of the epoch.
        log_scalars(trainer.loggers, {f"grad_distance_{name}/k={k}": float(curve[k])
                                      for name, curve in curves.items()
                                      for k in DISTANCES if k < len(curve)}, step)
        if self.image_every_n_steps and step >= self._next_image_step:
            log_image(trainer.loggers, "grad_distance/curve", self._draw(curves, step), step)
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
