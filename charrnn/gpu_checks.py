"""Every GPU measurement of docs/performance.md in one run, inside a time budget.

    python -m charrnn.gpu_checks --corpus <tinyshakespeare.txt> [--out <new folder>]
    python -m charrnn.gpu_checks --tiny --device cpu --out /tmp/checks   # the harness, on a CPU

The checks run one after another, each in a process of its own, most important first:

    environment  GPU, SM count, torch, CUDA and cuDNN versions
    train        bench --only train: the plain loop against train.py's path, fp32 and bf16
    gpu_tests    pytest -m gpu: every test that needs a GPU (no training step waits for it,
                 bf16's recurrence runs in fp32, the gradient distance matches the CPU's)
    profile      bench --only profile: torch.profiler over 20 steps of train.py's path
    tf32         3 epochs each with tf32=false, null (torch's defaults) and true
    cudnn        bench --only cudnn: which settings reach cuDNN's persistent RNN kernel
    overhead     bench --only overhead: the fixed cost of a step
    batch_size   data.batch_size 64..512 x module.lr 1e-3..4e-3, 5 epochs each
    persistent   to early stopping with the settings that reach cuDNN's persistent kernel
    recipe       the default recipe to early stopping, fp32 and bf16-mixed

After each check its results are added to <folder>/gpu_checks.json and its output to
<folder>/gpu_checks.log, so a run cut short keeps what it measured. A check is given what is left
of --budget-s (default: no limit); one that cannot start inside it is listed as skipped. Run
folders and traces go to a temporary folder: the two files are all that is written to <folder>.
The exit status is 0 when every check that ran passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from charrnn.bench import ROOT, resolve_device
from charrnn.data.corpus import download_tinyshakespeare
from charrnn.errors import CharRNNError
from charrnn.training.run_folder import train_config

JSON_FILE, LOG_FILE = "gpu_checks.json", "gpu_checks.log"
NAMES = ("train", "gpu_tests", "profile", "tf32", "cudnn", "overhead", "batch_size",
         "persistent", "recipe")
BATCH_SIZES, LEARNING_RATES = (64, 128, 256, 512), (1e-3, 2e-3, 4e-3)
# The settings that meet cuDNN's conditions for its persistent RNN kernel (docs/performance.md).
PERSISTENT = ("trainer.precision=16-mixed", "model.input=embedding", "model.embedding_dim=128")
SWEPT = ("data.batch_size", "module.lr", "trainer.precision", "model.input", "tf32")  # run names
HEADLINES = ("ratio_b_over_a", "ratio_c_over_a", "step_overhead_ms",  # printed when measured
             "profile_device_busy_fraction", "profile_pageable_copies_per_step")
MIN_START_S = 20  # a check is not started with less than this left
Reader = Callable[["Plan", str], dict]  # (plan, the check's output) -> its results


@dataclass
class Plan:
    """What the checks run with: the corpus, the device, where runs go and how small they are."""

    corpus: Path
    device: str
    work: Path
    tiny: bool

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def bench(self, group: str, *extra: str) -> list[str]:
        sizes = ["--tiny"] if self.tiny else []
        return [sys.executable, "-m", "charrnn.bench", "--only", group, "--device", self.device,
                "--corpus", str(self.corpus), "--json", str(self.work / f"{group}.json"),
                *sizes, *extra]

    def train(self, *overrides: str, multirun: bool = False) -> list[str]:
        sizes = ["model.hidden_size=16", "trainer.limit_train_batches=3",
                 "trainer.limit_val_batches=2", "trainer.max_epochs=2"] if self.tiny else []
        return [sys.executable, "train.py", *(["-m"] if multirun else []),
                f"data.path={self.corpus}", f"trainer.accelerator={self.accelerator}",
                *overrides, *sizes]


def default_cache_dir() -> str:
    """Where train.py keeps the downloaded corpus: data.cache_dir of conf/train/."""
    return train_config().data.cache_dir


def run_check(command: list[str], timeout: float) -> tuple[str, str]:
    """Its output and how it ended; at the timeout (seconds, or math.inf) its whole process
    group is stopped (the benchmark's workers too)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=None if math.isinf(timeout) else timeout)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # Windows: no process groups to signal
            process.kill()
        output, _ = process.communicate()
        return output, "out of time"
    return output, "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"


def environment() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None, "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1))
    return info


def bench_results(group: str) -> Reader:
    def read(plan: Plan, output: str) -> dict:
        return json.loads((plan.work / f"{group}.json").read_text())["results"]
    return read


def pytest_summary(plan: Plan, output: str) -> dict:
    lines = [line for line in output.splitlines() if line.strip()]
    return {"summary": lines[-1] if lines else ""}


def run_metrics(sweep: str) -> Reader:
    """metrics.json of every run under the sweep's folder, with the overrides that made it."""
    def read(plan: Plan, output: str) -> dict:
        runs = {}
        for metrics in sorted((plan.work / sweep).glob("*/metrics.json")):
            overrides = (metrics.parent / ".hydra" / "overrides.yaml").read_text()
            chosen = [line[2:] for line in overrides.splitlines()
                      if line.startswith("- ") and line[2:].split("=")[0] in SWEPT]
            m = json.loads(metrics.read_text())
            runs[" ".join(chosen)] = {k: m[k] for k in ("best_val_ppl", "test_ppl",
                                                        "epochs_run", "train_chars_per_s",
                                                        "wall_time_s")}
        return runs
    return read


def headline(results: dict | None) -> str:
    """The figures of a check's results that answer its question, for the terminal."""
    if not results:
        return ""
    shown = [f"{key} {results[key]:.3g}" for key in HEADLINES if key in results]
    persistent = [key[len("cudnn_"):-len("_persistent")] for key, value in results.items()
                  if key.endswith("_persistent") and value]
    if any(key.endswith("_persistent") for key in results):
        shown.append(f"cuDNN's persistent kernel in: {', '.join(persistent) or 'none'}")
    return ": " + "; ".join(shown) if shown else ""


def checks(plan: Plan) -> list[tuple[str, list[str], Reader]]:
    """(name, command, reader of its results), most important first."""
    sweep = f"hydra.sweep.dir={plan.work}"
    batch_sizes = "4,8" if plan.tiny else ",".join(map(str, BATCH_SIZES))
    rates = ",".join(map(str, LEARNING_RATES))
    return [
        ("train", plan.bench("train", "--repeats", "3", "--rounds", "1"), bench_results("train")),
        ("gpu_tests", [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                       "-m", "gpu"], pytest_summary),
        ("profile", plan.bench("profile"), bench_results("profile")),
        ("tf32", plan.train("tf32=false,null,true", "trainer.max_epochs=3", "test=false",
                            f"{sweep}/tf32", multirun=True), run_metrics("tf32")),
        ("cudnn", plan.bench("cudnn"), bench_results("cudnn")),
        ("overhead", plan.bench("overhead", "--rounds", "3", "--repeats", "4"),
         bench_results("overhead")),
        ("batch_size", plan.train(f"data.batch_size={batch_sizes}", f"module.lr={rates}",
                                  "trainer.max_epochs=5", "test=false", f"{sweep}/batch_size",
                                  multirun=True), run_metrics("batch_size")),
        ("persistent", plan.train(*PERSISTENT, f"hydra.run.dir={plan.work / 'persistent' / '0'}"),
         run_metrics("persistent")),
        ("recipe", plan.train("trainer.precision=32-true,bf16-mixed", f"{sweep}/recipe",
                              multirun=True), run_metrics("recipe")),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path,
                        help="training text (default: Tiny Shakespeare, downloaded like train.py)")
    parser.add_argument("--out", type=Path, help="a new folder for the report (default: "
                        "outputs/gpu_checks/<date>_<time>)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--budget-s", type=float, default=math.inf,
                        help="seconds for all checks together (default: no limit)")
    parser.add_argument("--only", action="append", choices=NAMES,
                        help="run only these checks (the environment is always read)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the harness only")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device == "cpu" and args.device == "auto" and not args.tiny:
        parser.error("no CUDA GPU is visible, and these are the GPU checks. On a CPU, --device "
                     "cpu runs them anyway (hours at full size); --tiny --device cpu checks the "
                     "harness in about a minute.")
    if args.corpus is None:
        try:
            args.corpus = download_tinyshakespeare(default_cache_dir())
        except CharRNNError as err:
            parser.error(f"{err} Or give the text with --corpus.")
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} is not a file: give the training text, e.g. "
                     "--corpus ../shared/data/tinyshakespeare.txt")
    if args.out is None:
        args.out = ROOT / "outputs" / "gpu_checks" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if (args.out / JSON_FILE).exists():
        parser.error(f"--out {args.out} already holds a report ({JSON_FILE}): give another "
                     "folder, so that the earlier report is kept")
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": environment(), "checks": {}, "skipped": []}
    log = args.out / LOG_FILE
    log.write_text(json.dumps(report["environment"]) + "\n")
    with tempfile.TemporaryDirectory() as work:
        plan = Plan(args.corpus.resolve(), device, Path(work), args.tiny)
        for name, command, read in checks(plan):
            if args.only and name not in args.only:
                continue
            left = deadline - time.monotonic()
            if left < MIN_START_S:
                report["skipped"].append(name)
                continue
            print(f"{name} ...", flush=True)
            start = time.monotonic()
            output, status = run_check(command, left)
            entry: dict = {"status": status, "seconds": round(time.monotonic() - start, 1)}
            try:
                entry["results"] = read(plan, output)
            except (OSError, ValueError, KeyError) as err:  # a failed check wrote nothing
                entry["results"] = None
                entry["error"] = repr(err)
            report["checks"][name] = entry
            with log.open("a") as f:
                f.write(f"\n===== {name}: {status}\n$ {' '.join(command)}\n{output[-20000:]}")
            (args.out / JSON_FILE).write_text(json.dumps(report, indent=2) + "\n")
            print(f"{name}: {status} in {entry['seconds']} s{headline(entry['results'])}",
                  flush=True)
    (args.out / JSON_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / JSON_FILE} and {log}")
    return report


if __name__ == "__main__":
    checked = main()["checks"].values()
    sys.exit(0 if all(check["status"] == "ok" for check in checked) else 1)
