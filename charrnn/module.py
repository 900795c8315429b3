"""The LightningModule: loss, exact perplexity, optimizer, gradient-norm logging."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from charrnn.data import IGNORE_INDEX
from charrnn.model import CharRNN

STAGES = ("train", "val", "test")


class CharRNNModule(L.LightningModule):
    """Wraps CharRNN; its hyperparameters (vocab string, model kwargs, lr) are plain containers,
    so every checkpoint loads with `torch.load(..., weights_only=True)` and decodes on its own."""

    def __init__(self, vocab: str, model: dict, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = CharRNN(len(vocab), **model)
        self.lr = lr
        self.last_grad_norm: torch.Tensor | None = None  # before clipping; read by callbacks
        # Token-weighted mean cross-entropy of the whole epoch: perplexity = exp(this), which is
        # not the mean of per-batch perplexities when batches hold different numbers of targets.
        self.mean_loss = torch.nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})

    def forward(self, x: torch.Tensor, state=None):
        return self.model(x, state)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        logits, _ = self.model(x)  # (B, T, V)
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        n_targets = (y != IGNORE_INDEX).sum()
        loss = loss_sum / n_targets
        self.mean_loss[f"{stage}_loss"].update(loss.detach(), weight=n_targets)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "train")
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._loss(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._loss(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metric = self.mean_loss[f"{stage}_loss"]
        if metric.update_count == 0:
            return
        loss = metric.compute()
        metric.reset()
        self.log(f"{stage}/{'loss' if stage != 'train' else 'loss_epoch'}", loss)
        self.log(f"{stage}/ppl", torch.exp(loss))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

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
        self.last_grad_norm = norm.detach()
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
