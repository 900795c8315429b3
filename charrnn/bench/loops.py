"""--only train, overhead and profile: training speed, a plain PyTorch loop against train.py's
Lightning path, each configuration in a process of its own (charrnn.bench's workers)."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from charrnn import host
from charrnn.bench.measure import (
    BATCH,
    SEQ_LENGTH,
    bench_corpus_text,
    median_time,
    peak_memory_mb,
    quiet,
    run_worker,
    synchronize,
)
from charrnn.models.registry import CharRNN
from charrnn.training.module import FUSED_ADAM_DEVICES
from charrnn.training.run_folder import train_config

OVERHEAD_HIDDEN = 16  # --only overhead: a model whose computing costs little
PROFILE_START, PROFILE_STEPS = 20, 20  # --only profile: warm-up steps, then profiled steps


class PlainLoop:
    """(a): the default recipe as a plain PyTorch loop; `block()` trains `steps` steps.

    model="nn.RNN": nn.RNN and a linear head, as a sixty-line script writes it (torch's default
    Adam); "charrnn": the project's own model (its kernel too) and optimizer (Adam, fused on a
    GPU), so that only the loop around them differs from train.py.
    """

    def __init__(self, corpus: Path, hidden_size: int, steps: int, precision: str,
                 device: str = "cpu", model: str = "nn.RNN") -> None:
        from charrnn.data.vocab import CharVocab, read_text

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
    return train_config([
        f"data.path={corpus}", f"run_dir={run_dir}", f"model.hidden_size={hidden_size}",
        f"trainer.max_epochs={repeats + 1}", f"trainer.limit_train_batches={steps}",
        "early_stopping.patience=1000", f"trainer.accelerator={device}", *overrides,
    ])


def lightning_path(corpus: Path, hidden_size: int, steps: int, repeats: int,
                   overrides: list[str], device: str = "cpu",
                   plain: PlainLoop | None = None) -> dict[str, float]:
    """(b)/(c): train.py's real path for repeats + 1 short epochs; the first is the warm-up.
    With `plain`, each epoch is paired with a block of that plain loop (PlainBlocks)."""
    from charrnn.studies.report import read_scalars
    from charrnn.training.run import train

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

    from charrnn.training.callbacks import SpeedMonitor
    from charrnn.training.run import prepare

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
}
TRAIN_WORKERS = ("plain_fp32", "plain_bf16", "lightning_fp32", "lightning_fp32_torch_kernel",
                 "lightning_fp32_no_diag", "lightning_bf16")


def bench_train(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Every configuration `--rounds` times, the rounds interleaved (a, b, ..., a, b, ...), so
    that a slow spell of a shared machine hits all configurations alike; medians over rounds."""
    corpus = args.corpus or bench_corpus_text(tmp, args.tiny)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in TRAIN_WORKERS}
    workers = TRAIN_WORKERS
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    if on_cpu and not host.onednn_has_bf16():  # train.py refuses bf16 there (emulated, slow)
        print("bf16: not measured, this CPU has no bf16 kernels (docs/machines.md)",
              file=sys.stderr)
        workers = tuple(kind for kind in TRAIN_WORKERS if "bf16" not in kind)
    for _ in range(args.rounds):
        for kind in workers:
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
    """torch.profiler over training steps of train.py's path (charrnn.training.profiling); its
    table of the costliest operations is printed."""
    from charrnn.training.profiling import StepProfile
    from charrnn.training.run import train

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
