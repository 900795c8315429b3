"""What the machine we run on offers, asked portably: the CPU's bf16 support, this process's
memory, the cores it may use. Linux answers through /proc and affinity; on macOS and Windows every
function has a fallback (an answer of "no", None or the machine's count), never an error.

May import charrnn.errors only (it needs nothing of charrnn)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
PROC_STATUS = Path("/proc/self/status")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matrix instructions (Intel AMX, AVX-512 BF16)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: a bf16 flag in /proc/cpuinfo, and
    oneDNN allowed to use it (ONEDNN_MAX_CPU_ISA). Without /proc (macOS, Windows): no, so that
    precision `auto` keeps fp32 there."""
    try:
        flags = set(CPUINFO.read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS) and onednn_has_bf16()


@functools.cache
def onednn_has_bf16() -> bool:
    """Whether oneDNN, which runs nn.LSTM (and nn.RNN, nn.GRU) on a CPU, has bf16 kernels here:
    x86 with AVX-512 or better. Without them there is no bf16 LSTM at all, and other bf16 work is
    emulated. oneDNN reads the CPU once and honours ONEDNN_MAX_CPU_ISA, which is how the tests
    and .ci/run look like an AVX2 CPU from a newer one."""
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported())


def rss_mb() -> float | None:
    """Resident memory of this process now, in MiB (Linux; None elsewhere)."""
    try:
        with PROC_STATUS.open() as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process, in MiB (Linux, macOS; None on Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def usable_cores() -> int:
    """The cores this process may run on (Linux: its affinity; elsewhere: the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
