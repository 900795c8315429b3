"""--only generate: characters/s of sampling, and the time from launch to the first character."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from charrnn.bench.measure import ROOT, bench_corpus_text, median_time
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import sample_text
from charrnn.models.registry import build_model


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


def mixed_chars_per_s(args: argparse.Namespace, tmp: Path) -> float:
    """One stream of the default RNN mixed with the Kneser-Ney counts of the bench corpus
    (order 7, log-linear: speed does not depend on the weights): the n-gram looked up at
    every step."""
    from charrnn.studies.mixture import EDGES, MixedNext, Mixture
    from charrnn.studies.ngram import KneserNey, load_split

    split = load_split(bench_corpus_text(tmp, args.tiny))
    counts = KneserNey(split.ids[: split.n_train], len(split.vocab), 7)
    path = write_random_checkpoint(tmp / "mixed.ckpt", split.vocab.chars, args.hidden_size)
    model, vocab = load_model(path)
    # the log-linear mixture, which validation chooses for the default recipe
    mixer = MixedNext(Mixture(7, 0.5, 0.0, [0.5] * len(EDGES), 0.0, False,
                              loglinear_weights=[0.35, 0.62], loglinear=True), counts)
    # an empty prompt (a newline): the made-up corpus of --tiny has no capitals
    seconds = median_time(lambda: sample_text(model, vocab, "", args.gen_length, 1.0,
                                              generator=torch.Generator().manual_seed(0),
                                              mix=mixer), args.repeats)
    return args.gen_length / seconds


def mixed_scoring(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Scoring the test split with the default RNN alone, and mixed with counting as
    `generate.py mode=score split=test mix=ngram` does it: the first time (the order and λ
    chosen on validation: the model reads that split too) and once mixture.json holds them."""
    from omegaconf import OmegaConf

    from charrnn.data.corpus import split_text
    from charrnn.generation.sampling import score_text
    from charrnn.studies.mixture import MIXTURE_FILE, mixed_scores
    from charrnn.studies.ngram import load_split

    corpus = bench_corpus_text(tmp, args.tiny)
    run = tmp / "mixed-run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"data": {
        "path": str(corpus), "cache_dir": None, "val_fraction": 0.1, "test_fraction": 0.1}}))
    split = load_split(corpus)
    model, vocab = load_model(write_random_checkpoint(tmp / "score.ckpt", split.vocab.chars,
                                                      args.hidden_size))
    text = split_text(run, "test")

    def mixed(fresh: bool) -> None:  # the model's own score comes from the same pass
        if fresh:
            (run / MIXTURE_FILE).unlink(missing_ok=True)
        mixed_scores(run, model, vocab, None)

    own = median_time(lambda: score_text(model, vocab, text), args.repeats)
    first = median_time(lambda: mixed(True), args.repeats)
    kept = median_time(lambda: mixed(False), args.repeats)
    return {"score_test_s": own, "score_test_mixed_s": kept, "score_test_mixed_first_s": first,
            "mixed_over_model_score": kept / own, "mixed_first_over_model_score": first / own}


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
    results["generate_mixed_1_chars_per_s"] = mixed_chars_per_s(args, tmp)
    results.update(mixed_scoring(args, tmp))
    results["generate_first_char_s"] = first
    results["import_torch_hydra_s"] = imports
    results["first_char_over_import"] = first / imports
    return results
