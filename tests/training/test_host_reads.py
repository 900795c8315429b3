"""No training step waits for the device: values are read to the host only in groups.

Reading a tensor's value (`.item()`, `float()`, `bool()`, `.tolist()`, `.cpu()`, ...) makes the
host wait for every queued GPU kernel. The grouped read of loss and gradient norm every
`gradients.check_every_n_steps` steps (GradientMonitor) and the gradient-distance diagnostic
(every `vanishing.every_n_steps`) are the only places a training step may do it.
"""

import traceback

import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode

from charrnn.training.run import build_callbacks, fit, prepare
from charrnn.training.trainer import build_trainer

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}
ALLOWED = (  # (file, function) of a frame on the way to the read
    ("charrnn/training/gradients.py", "_check"),  # GradientMonitor's grouped read
    ("charrnn/training/vanishing.py", "on_train_batch_end"),  # every vanishing.every_n_steps
)
HOST_TENSORS = "torch/optim/"  # Adam's step counters live on the host, even on a GPU


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, list[str]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            frames = traceback.extract_stack()[:-1]
            allowed = HOST_TENSORS in frames[-1].filename or any(
                path in f.filename and name == f.name for f in frames for path, name in ALLOWED)
            if not allowed:
                where = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                         for f in frames[-6:]]
                self.reads.append((func.__name__, where))
        return func(*args, **(kwargs or {}))


class WatchSteps(L.Callback):
    """Watches every training step, from before its first hook to after its last."""

    def __init__(self) -> None:
        self.mode = HostReads()
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mode.__exit__(None, None, None)
        self.steps += 1


def run_watched(cfg, watch: WatchSteps | None = None) -> WatchSteps:
    """train.py's fit with `watch` around every step (by default a WatchSteps)."""
    dm, module, resume = prepare(cfg)
    callbacks = build_callbacks(cfg, dm)
    watch = watch or WatchSteps()
    callbacks.others.insert(0, watch)  # its batch start runs first ...
    trainer = build_trainer(cfg, callbacks.all())
    # ... and its batch end last: after every other callback's
    trainer.callbacks.append(trainer.callbacks.pop(trainer.callbacks.index(watch)))
    fit(trainer, module, dm, resume, callbacks)
    return watch


def test_training_steps_read_nothing_outside_the_grouped_reads(tiny_cfg):
    watch = run_watched(tiny_cfg("gradients.check_every_n_steps=7", "vanishing.every_n_steps=5"))
    assert watch.steps >= 20
    assert watch.mode.reads == []


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_on_a_gpu_no_step_synchronizes(tiny_cfg, precision):
    """torch's own check: a synchronizing call inside a step is an error, not a warning. Under
    16-mixed the loss scaler's overflow flag stays on the GPU (fused Adam takes it there)."""

    class SyncError(WatchSteps):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            torch.cuda.set_sync_debug_mode("default")
            self.steps += 1

    cfg = tiny_cfg("trainer.accelerator=gpu", "gradients.check_every_n_steps=1000",
                   "vanishing.every_n_steps=0", "trainer.max_epochs=1",
                   f"trainer.precision={precision}")
    try:
        watch = run_watched(cfg, SyncError())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watch.steps > 0


@pytest.mark.gpu
def test_on_a_gpu_no_copy_comes_from_pageable_memory(tiny_cfg):
    """CUDA waits for all queued work before a copy from pageable memory, which the
    synchronisation check above cannot see: the profiler names each copy's source."""
    from charrnn.training.profiling import StepProfile
    from charrnn.training.run import train

    profile = StepProfile(start=2, steps=5)
    train(tiny_cfg("trainer.accelerator=gpu", "gradients.check_every_n_steps=1000",
                   "vanishing.every_n_steps=0", "trainer.max_epochs=1", "test=false"),
          first_callbacks=(profile,))
    summary = profile.summary()
    assert summary["profile_pageable_copies_per_step"] == 0
    assert summary["profile_syncs_per_step"] == 0
