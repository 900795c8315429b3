"""`train(cfg) -> metrics`: build data, model, callbacks and trainer from the config, fit, test."""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from charrnn.data.datamodule import CharDataModule
from charrnn.errors import CharRNNError, check_int, check_keys, check_number
from charrnn.generation.loading import load_checkpoint
from charrnn.models.registry import check_model_keys, model_settings
from charrnn.training.callbacks import ProgressLines, SampleText, SpeedMonitor, print_model_line
from charrnn.training.gradients import GradientMonitor
from charrnn.training.module import CharRNNModule
from charrnn.training.precision import set_tf32
from charrnn.training.run_folder import (
    CHECKPOINT_DIR,
    ERROR_FILE,
    LAST,
    METRICS_FILE,
    resolve_checkpoint,
)
from charrnn.training.trackers import (
    attach_results,
    check_trackers,
    close_trackers,
    log_config,
    log_scalars,
    remember_runs,
)
from charrnn.training.trainer import build_trainer, check_trainer_args
from charrnn.training.vanishing import VanishingMonitor

# Noise that tells a user nothing actionable: the corpus is an in-memory tensor (workers would
# only add start-up cost), a deprecation inside Lightning, and an advertisement.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
# Only a resume reaches a non-empty checkpoints/ (a new run refuses one): that is expected there.
warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)


def _check_resumable(ckpt: dict[str, Any], path: Path, dm: CharDataModule, model_cfg: dict) -> None:
    hparams = ckpt["hyper_parameters"]
    if hparams["vocab"] != dm.vocab.chars:
        old, new = set(hparams["vocab"]), set(dm.vocab.chars)
        raise CharRNNError(
            f"checkpoint {path} was trained on a corpus with another vocabulary "
            f"({len(old)} characters) than {dm.corpus_path} ({len(new)} characters; "
            f"only in the checkpoint: {''.join(sorted(old - new))!r}, only in the corpus: "
            f"{''.join(sorted(new - old))!r}). Resume with the data.path of the original run."
        )
    # model.kernel picks the code that computes the same function: any value resumes any run.
    # Settings a checkpoint predates take their defaults.
    saved = {k: v for k, v in model_settings(hparams.get("model") or {}).items() if k != "kernel"}
    wanted = {k: v for k, v in model_settings(model_cfg).items() if k != "kernel"}
    if saved != wanted:
        diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        raise CharRNNError(
            f"checkpoint {path} holds a model built with other settings: "
            + ", ".join(f"model.{k}={old!r} (config says {new!r})"
                        for k, (old, new) in diff.items())
            + ". Resume with the same model.* settings as the original run."
        )


def hparams_for_tensorboard(cfg: DictConfig) -> dict[str, Any]:
    """The settings a sweep varies, flattened to scalars for TensorBoard's HParams dashboard."""
    flat: dict[str, Any] = {"seed": cfg.seed, "tf32": cfg.tf32}
    for section in ("data", "model", "module", "early_stopping"):
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            if key not in ("path", "cache_dir"):
                flat[f"{section}.{key}"] = value
    for key in ("max_epochs", "gradient_clip_val", "precision"):
        flat[f"trainer.{key}"] = cfg.trainer[key]
    # TensorBoard takes numbers and strings only (None, bool as their names).
    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v)
            for k, v in flat.items()}


def _best_epoch(path: str) -> int | None:
    if not path:
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the message says what is kept and how to resume."""


@dataclass
class RunCallbacks:
    """A run's callbacks; the fit's outcome is read from the named ones."""

    checkpoint: ModelCheckpoint  # best.ckpt, lowest val/loss
    last_checkpoint: ModelCheckpoint  # last.ckpt, after every validation
    early_stopping: EarlyStopping
    speed: SpeedMonitor
    others: list[Callback]  # progress, samples, diagnostics, the caller's

    def all(self) -> list[Callback]:
        # last.ckpt comes after best.ckpt, so that it holds the best callback's state after
        # this validation's update.
        return [*self.others, self.speed, self.early_stopping, self.checkpoint,
                self.last_checkpoint]


# The config sections that are the keyword arguments of one class, with the arguments this
# project passes itself. (model.* serves several architectures: model.check_model_keys.)
CONSTRUCTED: dict[str, tuple[Any, tuple[str, ...]]] = {
    "data": (CharDataModule, ()),
    "module": (CharRNNModule, ("vocab", "model")),
    "samples": (SampleText, ()),
    "gradients": (GradientMonitor, ()),
    "vanishing": (VanishingMonitor, ()),
    "early_stopping": (EarlyStopping, ("monitor", "mode", "check_on_train_epoch_end")),
    "trainer": (L.Trainer, ("default_root_dir", "logger", "callbacks", "plugins")),
}


def prepare(cfg: DictConfig) -> tuple[CharDataModule, CharRNNModule, Path | None]:
    """The data, the module and the checkpoint to resume from (None for a new run), every
    setting checked before anything is written."""
    run_dir = Path(cfg.run_dir)
    for section, (target, taken) in CONSTRUCTED.items():
        check_keys(section, target, cfg[section].keys(), taken)
    check_trainer_args(OmegaConf.to_container(cfg.trainer, resolve=True))
    check_trackers(cfg)
    dm = CharDataModule(**cfg.data)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    check_model_keys(model_cfg)
    resume = None
    if cfg.ckpt_path is not None:
        resume = resolve_checkpoint(cfg.ckpt_path, "last")
        ckpt = load_checkpoint(resume)
        done, limit = int(ckpt["epoch"]) + 1, cfg.trainer.get("max_epochs")
        if limit not in (None, -1) and limit < done:
            raise CharRNNError(
                f"checkpoint {resume} holds the end of epoch {done}, beyond trainer.max_epochs="
                f"{limit}. To train on, raise the limit: `python train.py ckpt_path="
                f"{cfg.ckpt_path} trainer.max_epochs={done + 20}`."
            )
    elif any((run_dir / CHECKPOINT_DIR).glob("*.ckpt")):
        raise CharRNNError(
            f"run folder {run_dir} already holds checkpoints: refusing to overwrite them. "
            f"To continue that run use ckpt_path={run_dir}; for a new run choose another folder."
        )
    dm.prepare_data()
    dm.setup()
    if resume is not None:
        _check_resumable(ckpt, resume, dm, model_cfg)
    module = CharRNNModule(vocab=dm.vocab.chars, model=model_cfg, **cfg.module)
    return dm, module, resume


def build_callbacks(cfg: DictConfig, dm: CharDataModule) -> RunCallbacks:
    """Every callback of a run: the one place to add another."""
    ckpt_dir = Path(cfg.run_dir) / CHECKPOINT_DIR
    samples = SampleText(**cfg.samples)
    samples.check(dm.vocab)  # fails before training, not after the first epoch
    where = "conf/train/train.yaml"
    check_int("early_stopping.patience", cfg.early_stopping.patience, where, minimum=0)
    check_number("early_stopping.min_delta", cfg.early_stopping.min_delta, where, at_least=0)
    # The progress display comes after GradientMonitor: it shows the losses that one has read.
    others = [samples, GradientMonitor(**cfg.gradients), VanishingMonitor(**cfg.vanishing),
              ProgressLines()]
    # Both after every validation (Lightning's own guess skips that for val_check_interval=1).
    # Lightning 2.6 writes save_last=True's last.ckpt only when a best checkpoint was written
    # too, so last.ckpt has a callback of its own.
    return RunCallbacks(
        checkpoint=ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
            save_on_train_epoch_end=False,
        ),
        last_checkpoint=ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
            save_on_train_epoch_end=False, enable_version_counter=False,
        ),
        early_stopping=EarlyStopping(
            monitor="val/loss", mode="min", check_on_train_epoch_end=False, **cfg.early_stopping
        ),
        speed=SpeedMonitor(),
        others=others,
    )


def fit(trainer: L.Trainer, module: CharRNNModule, dm: CharDataModule, resume: Path | None,
        callbacks: RunCallbacks) -> None:
    """trainer.fit; Ctrl-C ends in a TrainingInterrupted that says what was saved."""
    _interruptible(trainer, callbacks, trainer.fit, module, datamodule=dm, ckpt_path=resume)


def _interruptible(trainer: L.Trainer, callbacks: RunCallbacks, run, *args, **kwargs):
    """Run a Trainer method; Lightning answers Ctrl-C by exiting with status 1, this raises a
    TrainingInterrupted instead (train.py turns it into its message and status 130)."""
    try:
        result = run(*args, **kwargs)
        interrupted = trainer.interrupted
    except SystemExit:
        if not trainer.interrupted:
            raise
        interrupted = True
    if interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores it now
        raise TrainingInterrupted(_interruption_message(callbacks))
    return result


def _interruption_message(callbacks: RunCallbacks) -> str:
    last = Path(callbacks.last_checkpoint.dirpath) / LAST
    run_dir = last.parent.parent
    if not last.is_file():
        return (f"interrupted before the first checkpoint: nothing to resume. The run folder "
                f"{run_dir} keeps its logs.")
    epoch = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1
    return (f"interrupted. The run folder {run_dir} keeps its checkpoints: last.ckpt holds the "
            f"end of epoch {epoch}. Resume with:\n  python train.py ckpt_path={run_dir}")


def test_and_write_metrics(cfg: DictConfig, trainer: L.Trainer, module: CharRNNModule,
                           dm: CharDataModule, callbacks: RunCallbacks, resume: Path | None,
                           seconds: float) -> dict[str, Any]:
    """Score the best checkpoint on the test split (when `cfg.test`); write metrics.json and
    the HParams entry. `seconds`: this process's time; a resumed run adds the time before."""
    run_dir = Path(cfg.run_dir)
    checkpoint = callbacks.checkpoint
    # Read the fit's outcome now: testing a checkpoint restores the callbacks' state from it.
    early_stopped = callbacks.early_stopping.stopped_epoch > 0
    epochs_run = trainer.current_epoch
    train_chars_per_s = callbacks.speed.chars_per_second
    earlier_seconds = callbacks.speed.earlier_wall_seconds
    best = checkpoint.best_model_path or str(run_dir / CHECKPOINT_DIR / LAST)
    test = {"test/loss": None, "test/ppl": None}
    if cfg.test:
        (test,) = _interruptible(trainer, callbacks, trainer.test, module, datamodule=dm,
                                 ckpt_path=best, verbose=False)
    best_val = checkpoint.best_model_score
    metrics = {
        "best_val_loss": float(best_val) if best_val is not None else None,
        "best_val_ppl": float(torch.exp(best_val)) if best_val is not None else None,
        "test_loss": test["test/loss"],
        "test_ppl": test["test/ppl"],
        "best_epoch": _best_epoch(checkpoint.best_model_path),
        "epochs_run": epochs_run,
        "early_stopped": early_stopped,
        "wall_time_s": round(earlier_seconds + seconds, 1),
        "train_chars_per_s": round(train_chars_per_s),
        "best_checkpoint": best,
        "resumed_from": str(resume) if resume else None,
        "parameters": sum(p.numel() for p in module.model.parameters()),
    }
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    for logger in trainer.loggers:  # the HParams dashboard: settings beside their results
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams_for_tensorboard(cfg), {
                f"hp/{key}": float(metrics[key])
                for key in ("best_val_ppl", "test_ppl", "epochs_run", "train_chars_per_s")
                if metrics[key] is not None
            })
    return metrics


def finish_trackers(trainer: L.Trainer, run_dir: Path, scalars: dict[str, float]) -> None:
    """What a run leaves the trackers at its end: `scalars` (the mixed test score) and its
    metrics.json."""
    if scalars:
        log_scalars(trainer.loggers, scalars, trainer.current_epoch)
    attach_results(trainer.loggers, run_dir, [run_dir / METRICS_FILE])


def train(cfg: DictConfig, first_callbacks: tuple[Callback, ...] = (),
          last_callbacks: tuple[Callback, ...] = (),
          after_test: Callable[[dict[str, Any]], dict[str, float]] | None = None,
          ) -> dict[str, Any]:
    """Train (or resume) one run in `cfg.run_dir`; test its best checkpoint; write metrics.json.

    `first_callbacks` run before the run's own (the benchmark's measurements), `last_callbacks`
    after them (a search trial's reporter: training knows nothing of studies). `after_test`:
    given the metrics, adds to metrics.json and returns scalars for the trackers (train.py's
    mixed test score)."""
    start = time.perf_counter()
    check_int("seed", cfg.seed, "conf/train/train.yaml", minimum=0)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.torch_threads is not None:
        check_int("torch_threads", cfg.torch_threads, "conf/train/train.yaml",
                  note=" or null (torch's default)")
        torch.set_num_threads(cfg.torch_threads)
    set_tf32(cfg.tf32)
    dm, module, resume = prepare(cfg)
    callbacks = build_callbacks(cfg, dm)
    callbacks.others[:0] = first_callbacks
    callbacks.others.extend(last_callbacks)
    trainer = build_trainer(cfg, callbacks.all())
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # .hydra/config.yaml keeps ${hydra:...} unresolved; this copy can be read back anywhere.
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if trainer.is_global_zero:
        remember_runs(trainer.loggers, run_dir)
        log_config(trainer.loggers, cfg, run_dir)
    if cfg.trainer.get("enable_model_summary", True):  # in place of Lightning's table
        print_model_line(trainer, module)
    try:
        fit(trainer, module, dm, resume, callbacks)
        metrics = test_and_write_metrics(cfg, trainer, module, dm, callbacks, resume,
                                         time.perf_counter() - start)
        scalars = after_test(metrics) if after_test is not None else {}
        if trainer.is_global_zero:
            finish_trackers(trainer, run_dir, scalars)
    except BaseException:
        close_trackers(trainer.loggers, failed=True)
        raise
    close_trackers(trainer.loggers, failed=False)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # left by an earlier failed attempt
    return metrics
