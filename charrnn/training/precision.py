"""Choosing the numeric precision of training: fp32 (the seed's recipe) or bf16 autocast, and
whether a GPU's fp32 matrix products may use TensorFloat-32."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from charrnn import host
from charrnn.errors import CharRNNError


def on_gpu(accelerator: str) -> bool:
    """Whether the Trainer will run on a GPU with this `trainer.accelerator`."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str | int:
    """`auto`: bf16-mixed where bf16 matrix multiplication is fast, else the seed's 32-true.

    On a CPU that means bf16 matrix instructions (`charrnn.host.cpu_has_bf16`): elsewhere bf16
    matmuls are emulated or barely faster, for a loss of precision. On a GPU auto
    keeps fp32 (docs/performance.md).
    """
    if precision != "auto":
        return precision
    if on_gpu(accelerator):
        return "32-true"
    return "bf16-mixed" if host.cpu_has_bf16() else "32-true"


# Lightning's precisions that compute in bf16 on a CPU (it runs 16-mixed as bf16-mixed there)
CPU_BF16 = ("bf16-mixed", "bf16-true", "bf16", "16-mixed", "16")


def check_cpu_precision(precision: str | int, accelerator: str) -> None:
    """Refuse, before a run starts, a precision that computes in bf16 on a CPU whose oneDNN has
    no bf16 kernels (x86 without AVX-512: most laptops and cloud VMs). There bf16 is emulated:
    measured on such a CPU, the default model trained 3 times and the Transformer 16 times
    slower than in fp32, and oneDNN has no bf16 LSTM at all (docs/performance.md, bf16)."""
    precision = str(precision)
    if precision not in CPU_BF16 or on_gpu(accelerator) or host.onednn_has_bf16():
        return
    as_bf16 = "" if precision.startswith("bf16") else " (a CPU runs it as bf16)"
    raise CharRNNError(
        f"trainer.precision={precision}{as_bf16} needs bf16 instructions, and this CPU has none "
        f"that PyTorch can use: oneDNN, which runs bf16 and the LSTM on a CPU, needs AVX-512, and "
        f"torch finds {torch.backends.cpu.get_cpu_capability()} here. Emulated, bf16 trained the "
        "default model 3 times and the Transformer 16 times slower than fp32 on such a "
        "CPU. Use trainer.precision=32-true (the default) or auto, which picks bf16 only where "
        "the CPU has it (docs/machines.md)."
    )


# The model line's note on a CPU without bf16 matrix instructions (docs/performance.md, bf16)
BF16_EMULATED = "emulated: no bf16 instructions found on this CPU, 32-true is faster here"


class CachedBF16Autocast(MixedPrecision):
    """Lightning's bf16-mixed with autocast's weight-cast cache on.

    Lightning turns the cache off, so inside nn.RNN every time step casts W_hh to bf16 again:
    100 casts of a 512 x 512 matrix per forward, which ate most of bf16's speed-up on this CPU.
    The cache lives only inside one training step's autocast region, so it never goes stale.
    """

    def __init__(self, device: str) -> None:
        super().__init__("bf16-mixed", device)

    def autocast_context_manager(self) -> torch.autocast:
        return torch.autocast(self.device, dtype=torch.bfloat16, cache_enabled=True)


def precision_arguments(precision: str | int, accelerator: str) -> dict:
    """Trainer arguments for a precision setting (`auto` resolved, bf16 with the cast cache)."""
    precision = resolve_precision(precision, accelerator)
    if precision != "bf16-mixed":
        return {"precision": precision}
    device = "cuda" if on_gpu(accelerator) else "cpu"
    return {"precision": None, "plugins": [CachedBF16Autocast(device)]}


class Tf32Hint(logging.Filter):
    """Lightning's advice on a GPU with Tensor Cores, to call
    `torch.set_float32_matmul_precision`, said with this project's key (`tf32`), and not at all
    after tf32=false, a choice made."""

    TEXT = ("this GPU has Tensor Cores: tf32=true runs fp32 matrix products in TensorFloat-32, "
            "faster and a little less precise (docs/performance.md, TF32).")

    def __init__(self) -> None:
        super().__init__()
        self.tf32: bool | None = None  # set_tf32 keeps it

    def filter(self, record: logging.LogRecord) -> bool:
        if "that has Tensor Cores" not in str(record.msg):
            return True
        record.msg, record.args = self.TEXT, ()
        return self.tf32 is not False


TF32_HINT = Tf32Hint()
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(TF32_HINT)


def set_tf32(tf32: bool | None) -> None:
    """`tf32`: whether fp32 matrix products on a GPU may use TensorFloat-32 tensor cores
    (Ampere and later; inputs rounded to 10 bits of mantissa, products summed in fp32).

    null restores torch's defaults, which differ by library: cuDNN (the recurrence of nn.RNN,
    LSTM, GRU) in TF32, cuBLAS (the output layer, the Transformer) in full fp32. true and false
    set both. Process-wide, so every run of a sweep sets it. Through torch's first switches
    (`cuda.matmul.allow_tf32`, `cudnn.allow_tf32`), which touch neither CPU library: Lightning
    and `cudnn.flags` read those, and reading them raises once torch's newer per-operator
    switches disagree with each other.
    """
    if tf32 not in (None, True, False):
        raise CharRNNError(
            f"tf32 must be true, false or null (torch's defaults), got {tf32!r}. Set it on the "
            "command line (tf32=true) or in conf/train/train.yaml."
        )
    torch.backends.cuda.matmul.allow_tf32 = tf32 is True
    torch.backends.cudnn.allow_tf32 = tf32 is not False
    TF32_HINT.tf32 = tf32


def tf32_note() -> str:
    """Which of a GPU's fp32 matrix products run in TF32 now, and the key's value."""
    libraries = [name for name, on in (("cuBLAS", torch.backends.cuda.matmul.allow_tf32),
                                       ("cuDNN", torch.backends.cudnn.allow_tf32)) if on]
    value = {None: "null", True: "true", False: "false"}[TF32_HINT.tf32]
    return f"{'TF32 in ' + ' and '.join(libraries) if libraries else 'no TF32'}, tf32={value}"
