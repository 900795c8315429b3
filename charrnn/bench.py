"""Benchmarks, measured in one run so that ratios compare like with like on a noisy machine.

    python -m charrnn.bench                  # training and generation, default sizes
    python -m charrnn.bench --only train     # one group: train | kernel | generate | corpus |
                                             # overhead | cudnn | profile
    python -m charrnn.bench --tiny           # seconds: a smoke test of the harness itself
    python -m charrnn.bench --device cpu     # train on the CPU even when a GPU is present
    python -m charrnn.bench --only overhead --set vanishing.every_n_steps=0  # what it costs

Every figure is the median of several repetitions after a warm-up; the table is printed and
written as JSON (--json, default outputs/bench.json). Training configurations each run in a
process of their own, which also gives each its own peak memory (max RSS).

train:  (a) a plain PyTorch loop of the default recipe, written below as the baseline;
        (b) the project's real Lightning path with the same configuration, as a user runs it
            (progress display, per-step logging, gradient norms, diagnostics at defaults; on a
            CPU the fused RNN kernel of charrnn.recurrence, model.kernel=auto);
        (bt) (b) with model.kernel=torch, i.e. nn.RNN's own forward as in (a): bt / a is what
            Lightning, logging and diagnostics cost, like for like;
        (b0) (b) with the vanishing-gradient diagnostic off (its cost: b / b0);
        (c) the fast path: (b) with trainer.precision=bf16-mixed;
        and validation characters/s of (b). All on --device (auto: the GPU when there is one,
        as train.py does); generation always runs on the CPU, where generate.py runs.
generate: characters/s of 1 and 64 samples, the default RNN and a Transformer of the cells
        study (4 blocks of 128, context 256: past 256 characters the cache slides), and the
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
        copies from pageable memory per step, and how busy the GPU was (charrnn.profiling).
corpus: encoding time and peak memory of the memory-mapped corpus cache at growing sizes
        (not in the default set: it writes a few hundred MB to a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from charrnn.model import CharRNN, build_model
from charrnn.module import FUSED_ADAM_DEVICES
from charrnn.sampling import load_model, sample_text

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
OVERHEAD_HIDDEN = 16  # --only overhead: a model whose computing costs little
PROFILE_START, PROFILE_STEPS = 20, 20  # --only profile: warm-up steps, then profiled steps
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


def write_random_checkpoint(path: Path, vocab: str, hidden_size: int,
                            **model: object) -> Path:
    """A checkpoint in train.py's format with untrained weights: speed does not depend on them."""
    settings = {"hidden_size": hidden_size, **model}
    net = build_model(len(vocab), **settings)
    torch.save(
        {
            "epoch": 0,
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"vocab": vocab, "model": settings, "lr": 1e-3},
        },
        path,
    )
    return path


# The Transformer of `experiment=cells`: 4 blocks of width 128, context 256.
BENCH_TRANSFORMER = {"cell": "transformer", "num_layers": 4, "num_heads": 4,
                     "context_length": 256}


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
    transformer = write_random_checkpoint(tmp / "transformer.ckpt", vocab,
                                          16 if args.tiny else 128, **BENCH_TRANSFORMER)
    results: dict[str, float] = {}
    for label, path in (("", ckpt), ("transformer_", transformer)):
        model, vocab_ = load_model(path)
        for batch, length in ((1, args.gen_length), (64, args.gen_length // 4)):
            generator = torch.Generator().manual_seed(0)

            def generate(batch: int = batch, length: int = length, model=model,
                         vocab_=vocab_, generator: torch.Generator = generator) -> None:
                sample_text(model, vocab_, "A", length, 1.0, num_samples=batch,
                            generator=generator)

            seconds = median_time(generate, args.repeats)
            results[f"generate_{label}{batch}_chars_per_s"] = batch * length / seconds
    first = median_time(lambda: time_to_first_char(ckpt), args.repeats, warmup=1)
    imports = median_time(import_time, args.repeats, warmup=1)
    results["generate_first_char_s"] = first
    results["import_torch_hydra_s"] = imports
    results["first_char_over_import"] = first / imports
    return results


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


class PlainLoop:
    """(a): the default recipe as a plain PyTorch loop; `block()` trains `steps` steps.

    model="nn.RNN": nn.RNN and a linear head, as a sixty-line script writes it (torch's default
    Adam); "charrnn": the project's own model (its kernel too) and optimizer (Adam, fused on a
    GPU), so that only the loop around them differs from train.py.
    """

    def __init__(self, corpus: Path, hidden_size: int, steps: int, precision: str,
                 device: str = "cpu", model: str = "nn.RNN") -> None:
        from charrnn.vocab import CharVocab, read_text

        text = read_text(corpus)
        vocab = CharVocab.from_text(text)
        self.data = vocab.encode(text[: int(len(text) * 0.8)]).long().to(device)
        torch.manual_seed(0)
        V = len(vocab)
        if model == "charrnn":
            net = CharRNN(V, hidden_size=hidden_size).to(device)
            self.forward = lambda x: net(x)[0]
        else:
            rnn = torch.nn.RNN(V, hidden_size, batch_first=True).to(device)
            head = torch.nn.Linear(hidden_size, V).to(device)
            net = torch.nn.ModuleList([rnn, head])
            self.forward = lambda x: head(rnn(F.one_hot(x, V).float())[0])
        self.params = list(net.parameters())
        fused = model == "charrnn" and torch.device(device).type in FUSED_ADAM_DEVICES
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3, fused=fused or None)
        self.steps, self.precision, self.device = steps, precision, device

    def block(self) -> None:
        L, B, device = SEQ_LENGTH, BATCH, self.device
        n_windows = (len(self.data) - 1) // L
        starts = torch.randperm(n_windows, device=device)[: self.steps * B] * L
        steps_ = torch.arange(L + 1, device=device)
        for i in range(self.steps):
            chunk = self.data[starts[i * B : (i + 1) * B, None] + steps_]  # (B, L + 1)
            x, y = chunk[:, :-1], chunk[:, 1:]
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 5.0)
            self.optimizer.step()


def plain_loop(corpus: Path, hidden_size: int, steps: int, repeats: int,
               precision: str, device: str = "cpu", model: str = "nn.RNN") -> dict[str, float]:
    """(a): characters/s of the plain loop, the median of `repeats` blocks after a warm-up."""
    loop = PlainLoop(corpus, hidden_size, steps, precision, device, model)
    seconds = median_time(loop.block, repeats, warmup=1, device=device)
    return {"chars_per_s": steps * BATCH * SEQ_LENGTH / seconds, **peak_memory_mb(device)}


class PlainBlocks(Callback):
    """Before every training epoch of the Lightning run it is given to (and before that run's
    SpeedMonitor starts the epoch's clock: it comes first among the callbacks), a block of the
    plain loop as long as the epoch: each epoch is paired with a plain block run seconds before
    it, so that both see the same spell of a shared machine. Milliseconds per step of each."""

    def __init__(self, loop: PlainLoop) -> None:
        self.loop = loop
        self.ms_per_step: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        start = time.perf_counter()
        self.loop.block()
        synchronize(self.loop.device)
        self.ms_per_step.append(1000 * (time.perf_counter() - start) / self.loop.steps)


def _train_config(corpus: Path, run_dir: str, hidden_size: int, steps: int, repeats: int,
                  overrides: list[str], device: str):
    from hydra import compose, initialize_config_dir

    from charrnn.checkpoints import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
        return compose("train", overrides=[
            f"data.path={corpus}", f"run_dir={run_dir}", f"model.hidden_size={hidden_size}",
            f"trainer.max_epochs={repeats + 1}", f"trainer.limit_train_batches={steps}",
            "early_stopping.patience=1000", f"trainer.accelerator={device}", *overrides,
        ])


def lightning_path(corpus: Path, hidden_size: int, steps: int, repeats: int,
                   overrides: list[str], device: str = "cpu",
                   plain: PlainLoop | None = None) -> dict[str, float]:
    """(b)/(c): train.py's real path for repeats + 1 short epochs; the first is the warm-up.
    With `plain`, each epoch is paired with a block of that plain loop (PlainBlocks)."""
    from charrnn.report import read_scalars
    from charrnn.training import train

    blocks = PlainBlocks(plain) if plain else None
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = _train_config(corpus, run_dir, hidden_size, steps, repeats, overrides, device)
        with quiet():
            train(cfg, first_callbacks=(blocks,) if blocks else ())
        logged = read_scalars(Path(run_dir))
    train_speeds = [v for _, v in logged["train/chars_per_s"]][1:]
    val_speeds = [v for _, v in logged["val/chars_per_s"]][1:]
    return {"chars_per_s": statistics.median(train_speeds),
            "val_chars_per_s": statistics.median(val_speeds), **peak_memory_mb(device),
            **_paired_ms(blocks, train_speeds)}


def _paired_ms(blocks: PlainBlocks | None, chars_per_s: list[float]) -> dict[str, list[float]]:
    """Milliseconds per step of each measured epoch and of the plain block paired with it."""
    if blocks is None:
        return {}
    return {"lightning_ms": [1000 * BATCH * SEQ_LENGTH / c for c in chars_per_s],
            "plain_ms": blocks.ms_per_step[1:]}  # [0]: the warm-up epoch's


def lightning_bare(corpus: Path, hidden_size: int, steps: int, repeats: int,
                   device: str = "cpu", plain: PlainLoop | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> dict[str, float]:
    """Lightning's own loop around the same module and data, and nothing else: no progress,
    logger, diagnostics or checkpoints (the floor of (b)'s fixed cost). `plain`: as in
    lightning_path."""
    import lightning as L

    from charrnn.callbacks import SpeedMonitor
    from charrnn.training import prepare

    blocks = PlainBlocks(plain) if plain else None
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = _train_config(corpus, run_dir, hidden_size, steps, repeats, overrides, device)
        dm, module, _ = prepare(cfg)
        speed = SpeedMonitor()
        trainer = L.Trainer(
            max_epochs=repeats + 1, limit_train_batches=steps, accelerator=device,
            gradient_clip_val=cfg.trainer.gradient_clip_val, num_sanity_val_steps=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=run_dir,
            callbacks=[blocks, speed] if blocks else [speed],
        )
        with quiet():
            trainer.fit(module, datamodule=dm)
    speeds = speed.epoch_chars_per_s[1:]
    return {"chars_per_s": statistics.median(speeds), **_paired_ms(blocks, speeds)}


def bench_kernel(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Milliseconds per forward + backward of the default model (batch 64 x 100) for each kernel,
    the kernels alternating so that both see the same spells of a shared machine."""
    torch.manual_seed(0)
    batch, length = (4, 10) if args.tiny else (BATCH, SEQ_LENGTH)
    model = CharRNN(65, hidden_size=args.hidden_size)
    x, y = torch.randint(65, (batch, length)), torch.randint(65, (batch, length))
    results: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        times: dict[str, list[float]] = {"torch": [], "fused": []}
        for i in range(2 + 5 * args.repeats):  # the first two rounds warm up
            for kernel, spent in times.items():
                model.kernel = kernel
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits, _ = model(x)
                F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).backward()
                if i >= 2:
                    spent.append(time.perf_counter() - start)
        for kernel, spent in times.items():
            results[f"kernel_{kernel}_{precision}_ms"] = 1000 * statistics.median(spent)
        results[f"kernel_speedup_{precision}"] = (results[f"kernel_torch_{precision}_ms"]
                                                  / results[f"kernel_fused_{precision}_ms"])
    return results | adam_step_ms(model, args.repeats)


def adam_step_ms(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Milliseconds per Adam step over the model's parameters: torch's default implementation
    for them (on a CPU a loop over the tensors) against the fused one (training's on a GPU),
    alternating."""
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizers = {"default": torch.optim.Adam(model.parameters(), lr=1e-3),
                  "fused": torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(2 + 5 * repeats):  # the first two rounds warm up
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            for _ in range(20):
                optimizer.step()
            if i >= 2:
                times[name].append((time.perf_counter() - start) / 20)
    results = {f"adam_{name}_ms": 1000 * statistics.median(t) for name, t in times.items()}
    results["adam_speedup"] = results["adam_default_ms"] / results["adam_fused_ms"]
    return results


# --only cudnn: (name, model.input, autocast dtype). cuDNN picks its persistent RNN kernel only
# for fp16 input, one layer, and an input size and a hidden size that are multiples of 128
# (PyTorch's get_algo in aten/src/ATen/native/cudnn/RNN.cpp); one-hot input has 65, an
# embedding of 128 keeps the input projection outside the recurrence.
CUDNN_CASES = (
    ("onehot_fp32", "onehot", None),
    ("onehot_fp16", "onehot", torch.float16),
    ("embedding128_fp32", "embedding", None),
    ("embedding128_bf16", "embedding", torch.bfloat16),
    ("embedding128_fp16", "embedding", torch.float16),
)


def kernel_names(fn: Callable[[], object], device: str) -> list[str]:
    """The GPU kernels one call of fn runs (on a CPU its operators), costliest first."""
    from torch.profiler import ProfilerActivity, profile

    gpu = torch.device(device).type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]) as prof:
        fn()
        synchronize(device)
    cost = "self_device_time_total" if gpu else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, cost), reverse=True)
    return [e.key for e in events if getattr(e, cost) > 0]


def bench_cudnn(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Milliseconds per forward + backward of nn.RNN (model.kernel=torch: cuDNN on a GPU) at
    batch 64 x 100, one-hot or with an embedding of 128, fp32 or under autocast; `_persistent`
    is 1 when a kernel of the step is one of cuDNN's persistent ones (its name says 'persist').
    Each case's five costliest kernels are printed."""
    torch.manual_seed(0)
    device = args.device
    batch, length = (4, 10) if args.tiny else (BATCH, SEQ_LENGTH)
    x = torch.randint(65, (batch, length), device=device)
    y = torch.randint(65, (batch, length), device=device)
    results: dict[str, float] = {}
    for name, input, dtype in CUDNN_CASES:
        model = CharRNN(65, hidden_size=args.hidden_size, input=input, embedding_dim=128,
                        kernel="torch").to(device)

        def step(model: CharRNN = model, dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                logits, _ = model(x)
            F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).backward()

        results[f"cudnn_{name}_ms"] = 1000 * median_time(step, 5 * args.repeats, warmup=2,
                                                         device=device)
        names = kernel_names(step, device)
        results[f"cudnn_{name}_persistent"] = float(any("persist" in n.lower() for n in names))
        print(f"{name}: {'; '.join(names[:5])}")
    return results


def corpus_encode(corpus: Path, cache_dir: Path) -> dict[str, float]:
    """Build the memory-mapped cache of `corpus` (from scratch): seconds and peak memory."""
    from charrnn.cache import cached_corpus

    start = time.perf_counter()
    _, data = cached_corpus(corpus, cache_dir)
    return {"seconds": time.perf_counter() - start, "chars": len(data),
            "peak_rss_mb": peak_rss_mb()}


def corpus_train(corpus: Path, cache_dir: Path, hidden_size: int, steps: int) -> dict[str, float]:
    """A few training steps (and a little validation and test) from the cached corpus."""
    from hydra import compose, initialize_config_dir

    from charrnn.checkpoints import register_resolvers
    from charrnn.training import train

    register_resolvers()
    with tempfile.TemporaryDirectory() as run_dir:
        with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
            cfg = compose("train", overrides=[
                f"data.path={corpus}", f"data.cache_dir={cache_dir}", "data.memmap=true",
                f"run_dir={run_dir}", f"model.hidden_size={hidden_size}", "trainer.max_epochs=1",
                f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=2",
                "trainer.limit_test_batches=2", "vanishing.every_n_steps=0",
            ])
        start = time.perf_counter()
        with quiet():
            train(cfg)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def bench_corpus(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Encoding time and peak memory as the corpus grows (Tiny Shakespeare repeated)."""
    source = bench_corpus_text(tmp, args.tiny).read_bytes()
    results: dict[str, float] = {}
    for megabytes in (0.1, 0.2) if args.tiny else (1, 10, 100, 300):
        path = tmp / f"corpus_{megabytes}mb.txt"
        size = int(megabytes * 1_000_000)
        with open(path, "wb") as f:
            for _ in range(size // len(source)):
                f.write(source)
            rest = source[: size % len(source)]
            f.write(rest[: rest.rfind(b"\n") + 1])  # whole lines: never a split character
        cache = tmp / "cache"
        encoded = run_worker("corpus_encode", args, path, cache)
        trained = run_worker("corpus_train", args, path, cache)
        label = f"corpus_{megabytes}mb"
        results[f"{label}_encode_s"] = encoded["seconds"]
        results[f"{label}_encode_peak_rss_mb"] = encoded["peak_rss_mb"]
        results[f"{label}_train_peak_rss_mb"] = trained["peak_rss_mb"]
        path.unlink()
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    return results


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


def _overhead_plain(a: argparse.Namespace) -> PlainLoop:
    """The plain loop paired with the Lightning paths of --only overhead: the project's model."""
    return PlainLoop(a.corpus, OVERHEAD_HIDDEN, a.train_steps, "fp32", a.device, model="charrnn")


WORKERS = {
    "plain_fp32": lambda a: plain_loop(
        a.corpus, a.hidden_size, a.train_steps, a.repeats, "fp32", a.device),
    "plain_bf16": lambda a: plain_loop(
        a.corpus, a.hidden_size, a.train_steps, a.repeats, "bf16", a.device),
    "lightning_fp32": lambda a: lightning_path(
        a.corpus, a.hidden_size, a.train_steps, a.repeats, a.set, a.device),
    "lightning_fp32_torch_kernel": lambda a: lightning_path(
        a.corpus, a.hidden_size, a.train_steps, a.repeats, ["model.kernel=torch", *a.set],
        a.device),
    "lightning_fp32_no_diag": lambda a: lightning_path(
        a.corpus, a.hidden_size, a.train_steps, a.repeats, ["vanishing.every_n_steps=0", *a.set],
        a.device),
    "lightning_bf16": lambda a: lightning_path(
        a.corpus, a.hidden_size, a.train_steps, a.repeats,
        ["trainer.precision=bf16-mixed", *a.set], a.device),
    "overhead_lightning": lambda a: lightning_path(
        a.corpus, OVERHEAD_HIDDEN, a.train_steps, a.repeats, a.set, a.device,
        plain=_overhead_plain(a)),
    "overhead_lightning_bare": lambda a: lightning_bare(
        a.corpus, OVERHEAD_HIDDEN, a.train_steps, a.repeats, a.device, plain=_overhead_plain(a),
        overrides=a.set),
    "corpus_encode": lambda a: corpus_encode(a.corpus, a.cache_dir),
    "corpus_train": lambda a: corpus_train(a.corpus, a.cache_dir, a.hidden_size, 20),
}
TRAIN_WORKERS = ("plain_fp32", "plain_bf16", "lightning_fp32", "lightning_fp32_torch_kernel",
                 "lightning_fp32_no_diag", "lightning_bf16")


def bench_train(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Every configuration `--rounds` times, the rounds interleaved (a, b, ..., a, b, ...), so
    that a slow spell of a shared machine hits all configurations alike; medians over rounds."""
    corpus = args.corpus or bench_corpus_text(tmp, args.tiny)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in TRAIN_WORKERS}
    for _ in range(args.rounds):
        for kind in TRAIN_WORKERS:
            try:
                runs[kind].append(run_worker(kind, args, corpus))
            except RuntimeError as err:  # one broken configuration must not lose the others
                print(err, file=sys.stderr)
    r: dict[str, dict[str, float]] = {}
    for kind, results in runs.items():
        keys = set().union(*results) if results else {"chars_per_s", "peak_rss_mb"}
        r[kind] = {key: statistics.median(run[key] for run in results) if results else math.nan
                   for key in keys}
    results = {
        "train_a_plain_fp32_chars_per_s": r["plain_fp32"]["chars_per_s"],
        "train_b_lightning_fp32_chars_per_s": r["lightning_fp32"]["chars_per_s"],
        "train_bt_lightning_fp32_nn_rnn_chars_per_s":
            r["lightning_fp32_torch_kernel"]["chars_per_s"],
        "train_b0_lightning_fp32_no_diagnostics_chars_per_s":
            r["lightning_fp32_no_diag"]["chars_per_s"],
        "train_c_lightning_bf16_chars_per_s": r["lightning_bf16"]["chars_per_s"],
        "train_plain_bf16_chars_per_s": r["plain_bf16"]["chars_per_s"],
        "ratio_b_over_a": r["lightning_fp32"]["chars_per_s"] / r["plain_fp32"]["chars_per_s"],
        "ratio_bt_over_a_overhead": r["lightning_fp32_torch_kernel"]["chars_per_s"]
        / r["plain_fp32"]["chars_per_s"],
        "ratio_c_over_a": r["lightning_bf16"]["chars_per_s"] / r["plain_fp32"]["chars_per_s"],
        "ratio_b_over_b0_diagnostics_cost": r["lightning_fp32"]["chars_per_s"]
        / r["lightning_fp32_no_diag"]["chars_per_s"],
        "val_chars_per_s_fp32": r["lightning_fp32"].get("val_chars_per_s", math.nan),
        "val_chars_per_s_bf16": r["lightning_bf16"].get("val_chars_per_s", math.nan),
        "ratio_val_over_train_fp32": r["lightning_fp32"].get("val_chars_per_s", math.nan)
        / r["lightning_fp32"]["chars_per_s"],
        "peak_rss_mb_plain_fp32": r["plain_fp32"]["peak_rss_mb"],
        "peak_rss_mb_lightning_fp32": r["lightning_fp32"]["peak_rss_mb"],
        "peak_rss_mb_lightning_bf16": r["lightning_bf16"]["peak_rss_mb"],
    }
    a_runs = [run["chars_per_s"] for run in runs["plain_fp32"]]
    if len(a_runs) > 1:  # the machine's own noise: the baseline against itself
        results["noise_a_spread_over_rounds"] = (max(a_runs) - min(a_runs)) / min(a_runs)
    for kind in ("plain_fp32", "lightning_fp32", "lightning_bf16"):
        if "peak_gpu_mb" in r[kind]:
            results[f"peak_gpu_mb_{kind}"] = r[kind]["peak_gpu_mb"]
    return results


def bench_overhead(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """The fixed cost of a training step: train.py's path against a plain loop around the same
    model, so small (hidden 16) that computing costs little, and Lightning's bare loop between
    them. Every epoch of a Lightning path is paired with a block of the plain loop run just
    before it in the same process (PlainBlocks); the overheads are medians of those pairs'
    differences over all rounds, with their quartiles and extremes."""
    corpus = args.corpus or bench_corpus_text(tmp, args.tiny)
    kinds = ("overhead_lightning_bare", "overhead_lightning")
    pairs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            run = run_worker(kind, args, corpus)
            pairs[kind] += zip(run["plain_ms"], run["lightning_ms"])
    bare, full = ([b - a for a, b in pairs[kind]] for kind in kinds)
    q1, _, q3 = statistics.quantiles(full, n=4) if len(full) > 1 else (full[0],) * 3
    overhead, loop = statistics.median(full), statistics.median(bare)
    return {
        "overhead_plain_ms_per_step": statistics.median(a for kind in kinds
                                                        for a, _ in pairs[kind]),
        "overhead_lightning_bare_ms_per_step": statistics.median(b for _, b in pairs[kinds[0]]),
        "overhead_lightning_ms_per_step": statistics.median(b for _, b in pairs[kinds[1]]),
        "step_overhead_ms": overhead,
        "step_overhead_ms_q1": q1,
        "step_overhead_ms_q3": q3,
        "step_overhead_ms_min": min(full),
        "step_overhead_ms_max": max(full),
        "step_overhead_pairs": len(full),
        "step_overhead_lightning_loop_ms": loop,
        "step_overhead_project_ms": overhead - loop,
    }


def bench_profile(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """torch.profiler over training steps of train.py's path (charrnn.profiling); its table of
    the costliest operations is printed."""
    from charrnn.profiling import StepProfile
    from charrnn.training import train

    corpus = args.corpus or bench_corpus_text(tmp, args.tiny)
    start, steps = (2, 3) if args.tiny else (PROFILE_START, PROFILE_STEPS)
    profile = StepProfile(start, steps, stop=True)
    with tempfile.TemporaryDirectory() as run_dir:
        # As many epochs as steps: a tiny corpus may hold one batch an epoch.
        cfg = _train_config(corpus, run_dir, args.hidden_size, start + steps + 1, start + steps,
                            ["test=false", "trainer.limit_val_batches=1", *args.set],
                            args.device)
        with quiet():
            train(cfg, first_callbacks=(profile,))
    print(profile.table())
    return profile.summary()


GROUPS = {"train": bench_train, "kernel": bench_kernel, "generate": bench_generate,
          "corpus": bench_corpus, "overhead": bench_overhead, "cudnn": bench_cudnn,
          "profile": bench_profile}
DEFAULT_GROUPS = ("train", "kernel", "generate")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(GROUPS), action="append")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help="training text (default: Tiny Shakespeare)")
    parser.add_argument("--train-steps", type=int, default=140, help="steps per repetition")
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the harness only")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2,
                        help="training configurations run this many times, interleaved")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where training runs (auto: the GPU when there is one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a train.py override for every Lightning path, e.g. "
                        "--set vanishing.every_n_steps=0 (what that setting costs)")
    parser.add_argument("--gen-length", type=int, default=4000)
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
        print(f"{key:<{width}}  {shown:>14}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
