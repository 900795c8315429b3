""".ci/cpu makes this machine look like an older CPU to each library torch computes with: ATen's
own kernels, oneDNN (the LSTM, bf16) and MKL (fp32 matrix products). Each variable is shown to
change what runs, so that the suite's runs under .ci/cpu (in .ci/run) test what they claim.
Skipped where this CPU already has no more than the limit. Slow: a fresh Python for each limit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")

# What a process reports of each library: ATen's capability; oneDNN's ISA (ONEDNN_VERBOSE names
# it at its first primitive, here an LSTM's) and whether it has bf16; MKL's banner (MKL_VERBOSE
# prints it at the first product of matrices).
PROBE = """
import torch
torch.mm(torch.ones(64, 64), torch.ones(64, 64))
torch.nn.LSTM(4, 4)(torch.ones(2, 1, 4))
from charrnn.host import onednn_has_bf16
print("aten", torch.backends.cpu.get_cpu_capability())
print("onednn_bf16", onednn_has_bf16())
"""


def probe(limit: str | None = None) -> str:
    """Output of the probe in a fresh Python: unlimited, or under `.ci/cpu <limit>`."""
    clean = {k: v for k, v in os.environ.items() if k not in LIMITS}
    command = [str(ROOT / ".ci" / "cpu"), limit] if limit else []
    result = subprocess.run([*command, sys.executable, "-c", PROBE], cwd=ROOT,
                            env={**clean, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def line(output: str, start: str) -> str:
    return next((x for x in output.splitlines() if x.startswith(start)), "")


@pytest.fixture(scope="module")
def unlimited() -> str:
    return probe()


@pytest.fixture(scope="module")
def avx2() -> str:
    return probe("avx2")


def test_aten_runs_avx2_or_plain_kernels(unlimited, avx2):
    if line(unlimited, "aten") in ("aten AVX2", "aten DEFAULT"):
        pytest.skip("this CPU has no more than AVX2")
    assert line(avx2, "aten") == "aten AVX2"
    assert line(probe("sse"), "aten") == "aten DEFAULT"


def test_onednn_runs_without_avx512_and_so_without_bf16(unlimited, avx2):
    if not isa(unlimited):
        pytest.skip("oneDNN ran no primitive here (this torch runs its LSTM elsewhere)")
    if line(unlimited, "onednn_bf16") != "onednn_bf16 True":
        pytest.skip("oneDNN has no bf16 kernels on this CPU already")
    assert isa(avx2) == "Intel AVX2" != isa(unlimited)
    assert line(avx2, "onednn_bf16") == "onednn_bf16 False"


def isa(output: str) -> str:
    """The instruction set oneDNN says it runs on."""
    return next((x.split(",isa:")[1].strip() for x in output.splitlines() if ",isa:" in x), "")


def test_mkl_uses_avx2_instructions(unlimited, avx2):
    banner = line(unlimited, "MKL_VERBOSE oneMKL") or line(unlimited, "MKL_VERBOSE Intel(R) MKL")
    if not banner:
        pytest.skip("torch here does not use MKL (e.g. an ARM build)")
    if "AVX-512" not in banner and "AVX512" not in banner:
        pytest.skip("MKL runs no more than AVX2 on this CPU already")
    banner = line(avx2, "MKL_VERBOSE oneMKL") or line(avx2, "MKL_VERBOSE Intel(R) MKL")
    assert "(Intel(R) AVX2)" in banner and "AVX-512" not in banner, banner
