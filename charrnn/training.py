"""`train(cfg) -> metrics`: build data, model, callbacks and trainer from the config, fit, test."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from charrnn.callbacks import ProgressLines, SampleText, SpeedMonitor
from charrnn.checkpoints import (
    CHECKPOINT_DIR,
    ERROR_FILE,
    LAST,
    METRICS_FILE,
    load_checkpoint,
    resolve_checkpoint,
)
from charrnn.data import CharDataModule
from charrnn.diagnostics import GradientMonitor, VanishingMonitor
from charrnn.errors import CharRNNError
from charrnn.module import CharRNNModule
from charrnn.precision import precision_arguments

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
    saved = {k: v for k, v in (hparams.get("model") or {}).items() if k != "kernel"}
    wanted = {k: v for k, v in model_cfg.items() if k != "kernel"}
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
    flat: dict[str, Any] = {"seed": cfg.seed}
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) one run in `cfg.run_dir`; test its best checkpoint; write metrics.json."""
    start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    dm = CharDataModule(**cfg.data)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    resume = None
    if cfg.ckpt_path is not None:
        resume = resolve_checkpoint(cfg.ckpt_path, "last")
        ckpt = load_checkpoint(resume)
    elif any(ckpt_dir.glob("*.ckpt")):
        raise CharRNNError(
            f"run folder {run_dir} already holds checkpoints: refusing to overwrite them. "
            f"To continue that run use ckpt_path={run_dir}; for a new run choose another folder."
        )
    dm.prepare_data()
    dm.setup()
    if resume is not None:
        _check_resumable(ckpt, resume, dm, model_cfg)
    samples = SampleText(**cfg.samples)
    samples.check(dm.vocab)
    module = CharRNNModule(vocab=dm.vocab.chars, model=model_cfg, **cfg.module)

    run_dir.mkdir(parents=True, exist_ok=True)
    # .hydra/config.yaml keeps ${hydra:...} unresolved; this copy can be read back anywhere.
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    # Both after every validation (Lightning's own guess skips that for val_check_interval=1).
    # Lightning 2.6 writes save_last=True's last.ckpt only when a best checkpoint was written
    # too, so last.ckpt has a callback of its own; it comes second so that it saves the best
    # callback's state after this validation's update.
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
        save_on_train_epoch_end=False,
    )
    last_checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
        save_on_train_epoch_end=False, enable_version_counter=False,
    )
    early_stopping = EarlyStopping(
        monitor="val/loss", mode="min", check_on_train_epoch_end=False, **cfg.early_stopping
    )
    speed = SpeedMonitor()
    # name="" and version="": event files go straight into the run folder, and a resumed run
    # appends to the same folder instead of starting version_1.
    logger = TensorBoardLogger(save_dir=run_dir, name="", version="", default_hp_metric=False)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args.update(precision_arguments(trainer_args["precision"], cfg.trainer.accelerator))
    trainer = L.Trainer(
        **trainer_args, default_root_dir=run_dir, logger=logger,
        callbacks=[
            ProgressLines(), speed, samples, GradientMonitor(**cfg.gradients),
            VanishingMonitor(**cfg.vanishing), early_stopping, checkpoint, last_checkpoint,
        ],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    if trainer.interrupted:
        raise KeyboardInterrupt
    # Read the fit's outcome now: testing a checkpoint restores the callbacks' state from it.
    early_stopped = early_stopping.stopped_epoch > 0
    epochs_run = trainer.current_epoch
    train_chars_per_s = speed.chars_per_second
    best = checkpoint.best_model_path or str(ckpt_dir / LAST)
    (test,) = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)

    best_val = checkpoint.best_model_score
    metrics = {
        "best_val_loss": float(best_val) if best_val is not None else None,
        "best_val_ppl": float(torch.exp(best_val)) if best_val is not None else None,
        "test_loss": test["test/loss"],
        "test_ppl": test["test/ppl"],
        "best_epoch": _best_epoch(checkpoint.best_model_path),
        "epochs_run": epochs_run,
        "early_stopped": early_stopped,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "train_chars_per_s": round(train_chars_per_s),
        "best_checkpoint": best,
        "resumed_from": str(resume) if resume else None,
        "parameters": sum(p.numel() for p in module.model.parameters()),
    }
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    logger.log_hyperparams(hparams_for_tensorboard(cfg), {
        f"hp/{key}": float(metrics[key])
        for key in ("best_val_ppl", "test_ppl", "epochs_run", "train_chars_per_s")
        if metrics[key] is not None
    })
    logger.finalize("success")
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # left by an earlier failed attempt
    return metrics
