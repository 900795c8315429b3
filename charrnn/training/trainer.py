"""The Lightning Trainer of conf/train/trainer/: its settings checked, logging to TensorBoard in
the run folder, a no-op profiler that costs nothing."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import PassThroughProfiler
from omegaconf import DictConfig, OmegaConf

from charrnn.errors import CharRNNError, check_gpu, check_int, check_number
from charrnn.training.precision import check_cpu_precision, precision_arguments
from charrnn.training.trackers import build_loggers

PROFILERS = ("simple", "advanced", "pytorch")  # trainer.profiler: Lightning's, by name
WHERE = "conf/train/trainer/default.yaml"


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (none) at less cost: the Trainer enters `profile(...)`
    around every hook of every callback, ~140 times a training step, and Lightning's is a
    generator-based context manager (~1 us each, ~0.1 ms a step)."""

    _NOTHING = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._NOTHING


def check_trainer_args(args: dict[str, Any]) -> None:
    """The settings Lightning accepts but this project cannot train with, and a GPU asked for
    where torch sees none (Lightning's own answer is a traceback). A key removed with ~ takes
    Lightning's default."""
    if args.get("max_epochs") not in (None, -1):
        check_int("trainer.max_epochs", args["max_epochs"], WHERE, note=" (or -1: no limit)")
    if args.get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", args["gradient_clip_val"], WHERE, at_least=0,
                     note=" (0 or null: no clipping)")
    if args.get("log_every_n_steps") is not None:
        check_int("trainer.log_every_n_steps", args["log_every_n_steps"], WHERE)
    interval = args.get("val_check_interval")
    if interval is not None and not (isinstance(interval, float) and 0 < interval <= 1):
        check_int("trainer.val_check_interval", interval, WHERE,
                  note=" (batches), a fraction of an epoch in (0, 1], or null")
    if args.get("profiler") not in (None, *PROFILERS):
        raise CharRNNError(
            f"unknown trainer.profiler {args['profiler']!r}: allowed values are null (none), "
            f"{', '.join(PROFILERS)} (Lightning's profilers; set it on the command line or in "
            f"{WHERE})."
        )
    if args.get("accelerator") in ("gpu", "cuda"):
        check_gpu(f"trainer.accelerator={args['accelerator']}",
                  "trainer.accelerator=auto (a GPU when there is one) or cpu")
    check_cpu_precision(args.get("precision", "32-true"),
                        resolve_accelerator(args.get("accelerator", "auto")))
    if args.get("accelerator") == "mps":
        raise CharRNNError(
            "trainer.accelerator=mps (Apple's GPU) is not supported: this project's training is "
            "tested on CPUs and NVIDIA GPUs only, and its bf16 path, fused kernel and gradient "
            "diagnostics are not written for MPS. Use trainer.accelerator=cpu (what auto picks "
            "on a Mac) or auto."
        )


def resolve_accelerator(accelerator: str) -> str:
    """`auto` as Lightning reads it (a CUDA GPU when there is one), except that Apple's GPU,
    which Lightning would pick on a Mac, is left for the CPU (see check_trainer_args)."""
    if accelerator == "auto" and not torch.cuda.is_available() and (
            torch.backends.mps.is_available()):
        return "cpu"
    return accelerator


def build_trainer(cfg: DictConfig, callbacks: list[Callback]) -> L.Trainer:
    """The Trainer of conf/train/trainer/, logging to the trackers of conf/train/logger/."""
    run_dir = Path(cfg.run_dir)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)  # checked by prepare()
    trainer_args["accelerator"] = resolve_accelerator(trainer_args.get("accelerator", "auto"))
    trainer_args.update(precision_arguments(trainer_args.get("precision", "32-true"),
                                            trainer_args.get("accelerator", "auto")))
    trainer_args["profiler"] = trainer_args.get("profiler") or NoProfiler()
    # trainer.enable_model_summary: callbacks.print_model_line's one line, not Lightning's table
    trainer_args["enable_model_summary"] = False
    logger = build_loggers(cfg, run_dir)
    try:
        return L.Trainer(**trainer_args, default_root_dir=run_dir, logger=logger,
                         callbacks=callbacks)
    except (MisconfigurationException, ValueError) as err:  # Lightning's checks of its arguments
        raise CharRNNError(
            f"Lightning refuses the trainer settings: {str(err).rstrip('.')}. Set the trainer.* "
            f"key it names on the command line or in {WHERE} (every key: docs/configuration.md)."
        ) from err
