"""Benchmarks, measured in one run so that ratios compare like with like on a noisy machine.

    python -m charrnn.bench                  # training and generation, default sizes
    python -m charrnn.bench --only train     # one group: train | kernel | generate | corpus |
                                             # overhead | cudnn | profile | serve | export
    python -m charrnn.bench --tiny           # seconds: a smoke test of the harness itself
    python -m charrnn.bench --device cpu     # train on the CPU even when a GPU is present
    python -m charrnn.bench --only overhead --set vanishing.every_n_steps=0  # what it costs

Every figure is the median of several repetitions after a warm-up; the table is printed and
written as JSON (--json, default outputs/bench.json). Training configurations each run in a
process of their own, which also gives each its own peak memory (max RSS).

train:  (a) a plain PyTorch loop of the default recipe, the baseline (loops.PlainLoop);
        (b) the project's real Lightning path with the same configuration, as a user runs it
            (progress display, per-step logging, gradient norms, diagnostics at defaults; on a
            CPU the fused RNN kernel of charrnn.models.recurrence, model.kernel=auto);
        (bt) (b) with model.kernel=torch, i.e. nn.RNN's own forward as in (a): bt / a is what
            Lightning, logging and diagnostics cost, like for like;
        (b0) (b) with the vanishing-gradient diagnostic off (its cost: b / b0);
        (c) the fast path: (b) with trainer.precision=bf16-mixed;
        and validation characters/s of (b). All on --device (auto: the GPU when there is one,
        as train.py does); generation always runs on the CPU, where generate.py runs.
generate: characters/s of 1 and 64 samples, the default RNN and a Transformer of the cells
        study (4 blocks of 128, context 256: past 256 characters the cache slides), one
        stream mixed with the Kneser-Ney counts of the corpus (generate.py mix=ngram), and the
        time from launching generate.py to its first character.
kernel: forward + backward of the model alone, model.kernel=torch (nn.RNN) against fused, fp32
        and bf16, alternating in one process (on the CPU); and an Adam step, torch's default
        implementation against the fused one.
overhead: the fixed cost of a step: milliseconds per step of train.py's path (progress,
        logging, diagnostics and checkpoints at their defaults) minus those of a plain loop
        around the same model at hidden 16, where computing costs little; every epoch is
        paired with a plain block run just before it in the same process.
cudnn:  nn.RNN's forward + backward (cuDNN on a GPU) with one-hot input or an embedding of 128,
        fp32, bf16 and fp16: which cases reach cuDNN's persistent RNN kernel, and at what speed.
profile: torch.profiler over 20 training steps of train.py's path at the default size, after 20
        of warm-up: the costliest operations, milliseconds per step, synchronising calls and
        host-to-device copies from pageable memory per step, and how busy the GPU was
        (charrnn.training.profiling).
corpus: encoding time and peak memory of the memory-mapped corpus cache at growing sizes
        (not in the default set: it writes a few hundred MB to a temporary folder).
serve:  the generation page's server (`generate.py mode=serve`, a process of its own) with 1, 8
        and 32 concurrent streams on loopback: total characters/s and time to the first
        character (p50, p99), beside generate.py's 1- and 64-sample rates (not in the default
        set: it needs the serve extra).
export: the page that `generate.py mode=export` writes, in headless Chromium: characters/s of
        its `generate` for rnn, gru and lstm at --hidden-size, beside generate.py's one stream
        of the same model, and each exported file's size (not in the default set: it needs
        Chromium and Playwright).

The groups live in loops.py (train, overhead, profile), kernels.py (kernel, cudnn),
generation.py, serving.py, export.py and corpus.py; measure.py holds the clocks, memory readings and
workers they share.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from charrnn.bench import corpus, export, generation, kernels, loops, serving
from charrnn.bench.measure import ROOT, resolve_device

__all__ = ["DEFAULT_GROUPS", "GROUPS", "ROOT", "main", "resolve_device"]

GROUPS = {"train": loops.bench_train, "kernel": kernels.bench_kernel,
          "generate": generation.bench_generate, "corpus": corpus.bench_corpus,
          "overhead": loops.bench_overhead, "cudnn": kernels.bench_cudnn,
          "profile": loops.bench_profile, "serve": serving.bench_serve,
          "export": export.bench_export}
DEFAULT_GROUPS = ("train", "kernel", "generate")
# One configuration each, run by measure.run_worker in a process of its own.
WORKERS = {**loops.WORKERS, **corpus.WORKERS}


def _count(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(GROUPS), action="append")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help="training text (default: Tiny Shakespeare)")
    parser.add_argument("--train-steps", type=_count, default=140, help="steps per repetition")
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the harness only")
    parser.add_argument("--repeats", type=_count, default=4)
    parser.add_argument("--rounds", type=_count, default=2,
                        help="training configurations run this many times, interleaved")
    parser.add_argument("--hidden-size", type=_count, default=512)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where training runs (auto: the GPU when there is one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train.py override for every Lightning path, e.g. "
                        "--set vanishing.every_n_steps=0 (what that setting costs)")
    parser.add_argument("--gen-length", type=_count, default=4000)
    parser.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench.json")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return {}
    if args.tiny:
        args.repeats, args.hidden_size, args.gen_length, args.train_steps = 1, 16, 40, 3
        args.rounds = 1
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or DEFAULT_GROUPS:
            results.update(GROUPS[name](args, Path(tmp)))
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
               f"threads, torch {torch.__version__}")
    if args.device == "cuda":
        machine += f", training on {torch.cuda.get_device_name()}"
    report = {
        "machine": machine,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    print(machine)
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        if 0 < abs(value) < 1e-3:  # a difference between two computations of the same thing
            shown = f"{value:.2e}"
        print(f"{key:<{width}}  {shown:>14}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return results
