"""--only corpus: the memory-mapped corpus cache as the corpus grows."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from charrnn.bench.measure import bench_corpus_text, peak_rss_mb, quiet, run_worker


def corpus_encode(corpus: Path, cache_dir: Path) -> dict[str, float]:
    """Build the memory-mapped cache of `corpus` (from scratch): seconds and peak memory."""
    from charrnn.data.cache import cached_corpus

    start = time.perf_counter()
    _, data = cached_corpus(corpus, cache_dir)
    return {"seconds": time.perf_counter() - start, "chars": len(data),
            "peak_rss_mb": peak_rss_mb()}


def corpus_train(corpus: Path, cache_dir: Path, hidden_size: int, steps: int) -> dict[str, float]:
    """A few training steps (and a little validation and test) from the cached corpus."""
    from charrnn.training.run import train
    from charrnn.training.run_folder import train_config

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = train_config([
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


WORKERS = {
    "corpus_encode": lambda a: corpus_encode(a.corpus, a.cache_dir),
    "corpus_train": lambda a: corpus_train(a.corpus, a.cache_dir, a.hidden_size, 20),
}
