"""The LightningModule: loss, exact perplexity, optimizer, gradient-norm logging."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from charrnn.data.windows import IGNORE_INDEX
from charrnn.errors import CharRNNError, check_int, check_number
from charrnn.models.registry import State, build_model, detach_state

STAGES = ("train", "val", "test")
# Adam's fused implementation (one kernel for all parameters) on a GPU: under 16-mixed it takes
# the loss scaler's overflow flag on the device, where the default step reads it back every
# step. On a CPU the seed recipe keeps torch's default: fused, the step is faster (0.14 against
# 0.37 ms at hidden 512, `bench --only kernel`), but that is a quarter of a percent of a training
# step, and its other rounding moves the default run's test perplexity by the noise of a run.
FUSED_ADAM_DEVICES = ("cuda",)


class CharRNNModule(L.LightningModule):
    """Wraps the model (charrnn.models.registry.build_model). Its hyperparameters (vocab string,
    model kwargs, lr) are plain containers, so every checkpoint loads with
    `torch.load(..., weights_only=True)` and decodes on its own."""

    def __init__(self, vocab: str, model: dict, lr: float = 1e-3, lr_schedule: str | None = None,
                 lr_factor: float = 0.5, lr_patience: int = 1, carry_state: bool = False) -> None:
        super().__init__()
        where = "conf/train/train.yaml"
        check_number("module.lr", lr, where, at_least=0, note=" (0 freezes the weights)")
        check_number("module.lr_factor", lr_factor, where, above=0, below=1)
        check_int("module.lr_patience", lr_patience, where, minimum=0)
        if lr_schedule not in (None, "plateau"):
            raise CharRNNError(
                f"unknown module.lr_schedule {lr_schedule!r}: allowed values are null (constant "
                "learning rate) and plateau (ReduceLROnPlateau on val/loss)."
            )
        # Into every checkpoint; TensorBoard gets them with the final metrics (training.py).
        self.save_hyperparameters(logger=False)
        self.model = build_model(len(vocab), **model)
        if carry_state and not self.model.recurrent:
            raise CharRNNError(
                f"module.carry_state=true carries a recurrent state from batch to batch, and "
                f"model.cell={model.get('cell')} has none: set module.carry_state=false."
            )
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        # Truncated BPTT across batches: needs data.contiguous_batches, so that row b of a batch
        # continues row b of the batch before. The state is reset when a split's epoch starts
        # and detached after every step.
        self.carry_state = carry_state
        self._state: State | None = None
        self._train_state: State | None = None  # kept while validation runs inside an epoch
        self.last_grad_norm: torch.Tensor | None = None  # before clipping; read by callbacks
        # Token-weighted mean cross-entropy of the whole epoch: perplexity = exp(this), which is
        # not the mean of per-batch perplexities when batches hold different numbers of targets.
        # Summed on the device, (loss sum, targets) per stage, and read once, at the epoch's end:
        # a step never waits for the device.
        self._totals: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = dict.fromkeys(STAGES)

    def __setattr__(self, name: str, value) -> None:
        # The Trainer sets _current_fx_name before and after every hook, ~50 times a step;
        # nn.Module's __setattr__ looks through parameters, buffers and submodules first
        # (~1 us each). A string is none of those.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor, state=None):
        return self.model(x, state)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        logits, state = self.model(x, self._state)  # (B, T, V)
        if self.carry_state:
            self._state = detach_state(state)
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        # Training windows are never padded: their count needs no tensor operations.
        n_targets = y.numel() if stage == "train" else (y != IGNORE_INDEX).sum()
        total = loss_sum.detach().to(_accumulator_dtype(loss_sum.device))
        if self._totals[stage] is not None:
            old_sum, old_count = self._totals[stage]
            total, n = old_sum + total, old_count + n_targets
        else:
            n = n_targets
        self._totals[stage] = (total, n)
        return loss_sum / n_targets

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")  # to TensorBoard by GradientMonitor

    def validation_step(self, batch, batch_idx: int) -> None:
        self._loss(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._loss(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        if self._totals[stage] is None:
            return
        (loss_sum, count), self._totals[stage] = self._totals[stage], None
        count = torch.as_tensor(count, device=loss_sum.device)  # an int in training
        if self._trainer is not None:  # summed over every process (DDP)
            loss_sum = self.trainer.strategy.reduce(loss_sum, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        loss = (loss_sum / count).float()
        self.log(f"{stage}/{'loss' if stage != 'train' else 'loss_epoch'}", loss)
        self.log(f"{stage}/ppl", torch.exp(loss))

    def on_train_epoch_start(self) -> None:
        self._state, self._totals["train"] = None, None

    def on_validation_epoch_start(self) -> None:
        self._train_state, self._state = self._state, None  # validation runs inside an epoch
        self._totals["val"] = None

    def on_test_epoch_start(self) -> None:
        self._state, self._totals["test"] = None, None

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        self._state = self._train_state

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by global norm and log the norm measured before clipping, every step."""
        params = self.parameters()
        if gradient_clip_algorithm == "value":
            norm = torch.nn.utils.clip_grad_norm_(params, math.inf)  # measure only
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val or math.inf)
        self.last_grad_norm = norm.detach()  # to TensorBoard by GradientMonitor

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr,
                                     fused=self.device.type in FUSED_ADAM_DEVICES or None)
        if self.lr_schedule is None:
            return optimizer
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.lr_factor, patience=self.lr_patience
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val/loss", "interval": "epoch"}}


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for the sums of a whole epoch's losses, where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64
