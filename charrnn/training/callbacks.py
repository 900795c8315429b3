"""Callbacks that show what training is doing: the model, progress lines, training throughput
and samples."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities import rank_zero_only

from charrnn import host
from charrnn.data.vocab import CharVocab
from charrnn.data.windows import IGNORE_INDEX
from charrnn.generation.sampling import check_sampling_args, sample_text
from charrnn.models.registry import model_settings
from charrnn.training.gradients import GradientMonitor
from charrnn.training.precision import BF16_EMULATED, tf32_note
from charrnn.training.trackers import log_text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _sync(pl_module: L.LightningModule) -> None:
    """GPU work is queued asynchronously: wait for it before reading a clock."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


# The settings that shape a model, recurrent or not (a Transformer always learns its input
# embedding), for model_line.
SHAPING = {True: ("cell", "hidden_size", "num_layers", "input", "embedding_dim"),
           False: ("cell", "hidden_size", "num_layers", "num_heads", "context_length")}


@rank_zero_only
def print_model_line(trainer: L.Trainer, pl_module: L.LightningModule,
                     stream: TextIO | None = None) -> None:
    """One line on the model before fitting, in place of Lightning's parameter table (one row
    for a model of one module, and a FLOPs column that reads 0 without an example input): its
    settings, size, device and precision. Not a callback: one more callback costs every step
    a call of each of its hooks."""
    model = pl_module.model
    chosen = pl_module.hparams["model"]
    settings = {**model_settings(chosen), "cell": chosen.get("cell", "rnn")}
    shown = " ".join(f"{k}={settings[k]}" for k in SHAPING[model.recurrent]
                     if settings.get(k) is not None)
    count = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    device, precision = trainer.strategy.root_device.type, trainer.precision
    if device == "cuda" and precision == "32-true":
        precision += f" ({tf32_note()})"
    if device == "cpu" and precision == "bf16-mixed" and not host.cpu_has_bf16():
        precision += f" ({BF16_EMULATED})"
    print(f"model: {type(model).__name__} ({shown}), {len(pl_module.hparams['vocab'])} "
          f"characters, {count:,} parameters ({size:.1f} MiB); training on {device} in "
          f"{precision}", file=stream or sys.stdout, flush=True)


class SpeedMonitor(Callback):
    """Training characters/s per epoch (validation time excluded), summed across resumes, and
    validation characters/s; the run's wall time before this process (`earlier_wall_seconds`:
    up to the checkpoint it resumed from)."""

    def __init__(self) -> None:
        self.train_chars = 0  # over the whole run, including before a resume
        self.train_seconds = 0.0
        self.earlier_wall_seconds = 0.0
        self._fit_start = time.perf_counter()
        self._epoch_chars = 0
        self._epoch_start = 0.0
        self._val_seconds = 0.0
        self._val_start = 0.0
        self._val_chars = 0
        self._in_epoch = False
        self.epoch_chars_per_s: list[float] = []  # each epoch of this process

    def _totals(self) -> tuple[int, float]:
        """Characters and seconds so far, the epoch in progress included (checkpoints are
        written after validation, before the epoch's end)."""
        if not self._in_epoch:
            return self.train_chars, self.train_seconds
        seconds = time.perf_counter() - self._epoch_start - self._val_seconds
        return self.train_chars + self._epoch_chars, self.train_seconds + seconds

    @property
    def chars_per_second(self) -> float:
        chars, seconds = self._totals()
        return chars / seconds if seconds else 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_chars, self._val_seconds = 0, 0.0
        self._epoch_start = time.perf_counter()
        self._in_epoch = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_chars += batch[0].numel()

    def on_validation_start(self, trainer, pl_module) -> None:
        _sync(pl_module)
        self._val_start = time.perf_counter()
        self._val_chars = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        # A tensor on the batch's device until the epoch ends: no GPU wait per batch.
        self._val_chars = self._val_chars + (batch[1] != IGNORE_INDEX).sum()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module)
        seconds = time.perf_counter() - self._val_start
        if seconds > 0 and not trainer.sanity_checking:
            pl_module.log("val/chars_per_s", int(self._val_chars) / seconds)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._in_epoch:
            return
        _sync(pl_module)
        seconds = time.perf_counter() - self._epoch_start - self._val_seconds
        self.train_chars, self.train_seconds = self._totals()
        self._in_epoch = False
        if seconds > 0:
            self.epoch_chars_per_s.append(self._epoch_chars / seconds)
            pl_module.log("train/chars_per_s", self._epoch_chars / seconds)

    def state_dict(self) -> dict[str, Any]:
        chars, seconds = self._totals()
        wall = self.earlier_wall_seconds + time.perf_counter() - self._fit_start
        return {"train_chars": chars, "train_seconds": seconds, "wall_seconds": wall}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_chars = state_dict["train_chars"]
        self.train_seconds = state_dict["train_seconds"]
        self.earlier_wall_seconds = state_dict.get("wall_seconds", 0.0)  # older checkpoints


class ProgressLines(ProgressBar):
    """Progress for terminals and CI logs alike.

    On a terminal one line is redrawn in place; elsewhere (CI, `nohup`, a pipe) a new line is
    printed every tenth of an epoch, so a log shows progress without flooding. Each line gives
    the batch, characters/s, the epoch's running train loss and the last validation perplexity.
    The loss is the mean of the values GradientMonitor has read so far (it reads them in
    groups): drawing never reads a tensor, so a step never waits for a GPU.
    """

    def __init__(self, stream: TextIO | None = None, refresh_seconds: float = 0.5) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self.refresh_seconds = refresh_seconds
        self._enabled = True
        self._live = self.stream.isatty()
        self._losses = None  # GradientMonitor, found when training starts
        self._val = "val ppl -"
        self._reset_epoch()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _reset_epoch(self) -> None:
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._next_decile = 1
        self._chars = 0
        self._batches = 0

    def _write(self, text: str, final: bool) -> None:
        if not self._enabled:
            return
        if self._live:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _loss(self) -> str:
        mean = self._losses.epoch_mean_loss() if self._losses is not None else None
        return f"  loss {mean:.4f}" if mean is not None else ""

    def _epoch_label(self, trainer: L.Trainer) -> str:
        return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def on_train_start(self, trainer, pl_module) -> None:
        self._losses = next((c for c in trainer.callbacks if isinstance(c, GradientMonitor)),
                            None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset_epoch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._chars += batch[0].numel()
        self._batches += 1
        total = self.total_train_batches
        done = batch_idx + 1
        now = time.perf_counter()
        if self._live:
            if now - self._last_draw < self.refresh_seconds and done != total:
                return
        elif not (isinstance(total, int) and done * 10 >= self._next_decile * total):
            return
        while isinstance(total, int) and done * 10 >= self._next_decile * total:
            self._next_decile += 1
        self._last_draw = now
        elapsed = now - self._start
        speed = self._chars / elapsed if elapsed > 0 else 0.0
        if isinstance(total, int) and total > 0:
            filled = 20 * done // total
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {100 * done // total:3d}%"
            eta = f"  eta {_duration(elapsed / done * (total - done))}"
        else:
            bar, eta = f"{done} batches", ""
        self._write(f"{self._epoch_label(trainer)} {bar}  {speed / 1000:.1f}k char/s"
                    f"{self._loss()}  {self._val}{eta}", final=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._live:
            self._write(f"{self._epoch_label(trainer)} validating ...", final=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        ppl = trainer.callback_metrics.get("val/ppl")  # read once per validation
        if ppl is not None and not trainer.sanity_checking:
            self._val = f"val ppl {float(ppl):.3f}"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._batches:
            return
        metrics = trainer.callback_metrics
        val = ""
        if "val/loss" in metrics:
            val = f"  val loss {float(metrics['val/loss']):.4f}  {self._val}"
        self._write(
            f"{self._epoch_label(trainer)} done in {_duration(time.perf_counter() - self._start)}"
            f"{self._loss().replace('loss', 'train loss')}{val}",
            final=True,
        )

    def on_test_start(self, trainer, pl_module) -> None:
        self._write("testing ...", final=False)

    def on_test_end(self, trainer, pl_module) -> None:
        if self._live:
            self._write("", final=False)


class SampleText(Callback):
    """After every validation, samples at a few temperatures go to TensorBoard's Text tab.

    The same seed is used every epoch, so the text changes only because the model does; a
    generator of its own keeps the training RNG (and so an exact resume) untouched.
    """

    def __init__(self, prompt: str = "", length: int = 300,
                 temperatures: tuple[float, ...] = (0.5, 1.0, 1.5), seed: int = 0) -> None:
        self.prompt = prompt
        self.length = length
        self.temperatures = tuple(temperatures)
        self.seed = seed

    def check(self, vocab: CharVocab) -> None:
        """Fail before training (not after the first epoch) on a bad prompt or setting."""
        for temperature in self.temperatures:
            check_sampling_args(vocab, self.prompt, self.length, temperature, None,
                                prefix="samples.")

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.loggers or not self.temperatures:
            return
        vocab = CharVocab(pl_module.hparams.vocab)
        for temperature in self.temperatures:
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            (text,) = sample_text(pl_module.model, vocab, self.prompt, self.length, temperature,
                                  generator=generator)
            log_text(trainer.loggers, f"samples/T={temperature}", self.prompt + text,
                     trainer.global_step)
