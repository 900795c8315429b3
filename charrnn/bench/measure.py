"""How the benchmarks measure: clocks that wait for the GPU, peak memory, a quiet training run,
the corpus they train on, and one configuration in a process of its own."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from charrnn import host

ROOT = Path(__file__).resolve().parents[2]
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
BATCH, SEQ_LENGTH = 64, 100  # a step of the default recipe: 64 windows of 100 characters


def quiet() -> contextlib.ExitStack:
    """Training's progress and Lightning's messages kept off the benchmark's output."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def synchronize(device: torch.device | str = "cpu") -> None:
    """Wait for queued GPU work: CUDA runs asynchronously, so a host clock needs this."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def resolve_device(device: str) -> str:
    """auto: the GPU when there is one (as training does), else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory of this process, and peak GPU memory when training ran on one."""
    peak = {"peak_rss_mb": peak_rss_mb()}
    if device == "cuda":
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak

def peak_rss_mb() -> float:
    return host.peak_rss_mb() or math.nan  # Windows: not measured


def bench_corpus_text(tmp: Path, tiny: bool) -> Path:
    """Tiny Shakespeare when it is beside the checkout, else ~1 MB of made-up text."""
    if SHARED_CORPUS.is_file() and not tiny:
        return SHARED_CORPUS
    import random

    rng = random.Random(0)
    words = "the king and queen of france shall not speak to thee my lord".split()
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(
        2000 if tiny else 20000))
    path = tmp / "bench_corpus.txt"
    path.write_text(text)
    return path

def run_worker(kind: str, args: argparse.Namespace, corpus: Path,
               cache_dir: Path | None = None) -> dict[str, float]:
    """One configuration in a fresh process (its own peak memory); its JSON result."""
    cmd = [sys.executable, "-m", "charrnn.bench", "--worker", kind, "--corpus", str(corpus),
           "--hidden-size", str(args.hidden_size), "--train-steps", str(args.train_steps),
           "--repeats", str(args.repeats), "--cache-dir", str(cache_dir or ""),
           "--device", args.device, *(f"--set={o}" for o in args.set)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
