"""Benchmarks, measured in one run so that ratios compare like with like on a noisy machine.

    python -m charrnn.bench                  # everything, default sizes
    python -m charrnn.bench --only generate  # one group
    python -m charrnn.bench --tiny           # seconds: a smoke test of the harness itself

Every figure is the median of several repetitions after a warm-up; the table is printed and
written as JSON (--json, default outputs/bench.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from charrnn.model import CharRNN
from charrnn.sampling import load_model, sample_text

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_random_checkpoint(path: Path, vocab: str, hidden_size: int) -> Path:
    """A checkpoint in train.py's format with untrained weights: speed does not depend on them."""
    model = CharRNN(len(vocab), hidden_size=hidden_size)
    torch.save(
        {
            "epoch": 0,
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"vocab": vocab, "model": {"hidden_size": hidden_size}, "lr": 1e-3},
        },
        path,
    )
    return path


def time_to_first_char(ckpt: Path) -> float:
    """Seconds from launching `python generate.py` to the first generated character."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "generate.py"), f"ckpt_path={ckpt}", "length=200"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    proc.stdout.read(1)
    elapsed = time.perf_counter() - start
    proc.stdout.read()
    proc.wait()
    return elapsed


def import_time() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, hydra"], check=True)
    return time.perf_counter() - start


def bench_generate(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    vocab = "".join(chr(c) for c in range(32, 32 + 65))  # 65 characters, like Tiny Shakespeare
    ckpt = write_random_checkpoint(tmp / "bench.ckpt", vocab, args.hidden_size)
    model, vocab_ = load_model(ckpt)
    results: dict[str, float] = {}
    for batch, length in ((1, args.gen_length), (64, args.gen_length // 4)):
        generator = torch.Generator().manual_seed(0)

        def generate(batch: int = batch, length: int = length,
                     generator: torch.Generator = generator) -> None:
            sample_text(model, vocab_, "A", length, 1.0, num_samples=batch, generator=generator)

        seconds = median_time(generate, args.repeats)
        results[f"generate_{batch}_chars_per_s"] = batch * length / seconds
    first = median_time(lambda: time_to_first_char(ckpt), args.repeats, warmup=1)
    imports = median_time(import_time, args.repeats, warmup=1)
    results["generate_first_char_s"] = first
    results["import_torch_hydra_s"] = imports
    results["first_char_over_import"] = first / imports
    return results


GROUPS = {"generate": bench_generate}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(GROUPS), action="append")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the harness only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--gen-length", type=int, default=4000)
    parser.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.hidden_size, args.gen_length = 1, 16, 40
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or sorted(GROUPS):
            results.update(GROUPS[name](args, Path(tmp)))
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                   f"threads, torch {torch.__version__}",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        print(f"{key:<{width}}  {shown:>14}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
