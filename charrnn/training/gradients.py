"""Exploding gradients, watched while training: the loss and pre-clip gradient norm of every
step, the fraction of steps clipped and a histogram of the norms per epoch, and a stop with a
clear message when a run diverges, before anything is saved from it."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from charrnn.errors import CharRNNError, check_int, check_number
from charrnn.training.trackers import log_scalars

WHERE = "conf/train/train.yaml"  # gradients.*


class TrainingDiverged(CharRNNError):
    """The training loss or gradient norm became non-finite or exploded."""


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
    checked and written straight to the trackers (every `trainer.log_every_n_steps`, steps
    numbered from 0 as Lightning's own).
    """

    def __init__(self, max_loss_ratio: float = 3.0, check_every_n_steps: int = 20) -> None:
        check_number("gradients.max_loss_ratio", max_loss_ratio, WHERE, above=0)
        check_int("gradients.check_every_n_steps", check_every_n_steps, WHERE)
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
        for (step, _, _, _), (loss, norm) in zip(pending, values.tolist()):
            if not getattr(trainer, "loggers", None):
                break
            if step % trainer.log_every_n_steps == 0:  # step: steps taken, from 1
                log_scalars(trainer.loggers, {"train/loss": loss, "train/grad_norm": norm},
                            step - 1)
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
        for logger in getattr(trainer, "loggers", []):  # TensorBoard's: no other has one
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram("train/grad_norm_hist", norms,
                                                global_step=trainer.current_epoch)
