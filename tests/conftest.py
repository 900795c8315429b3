"""Shared fixtures: tiny corpora in tmp_path and the real Hydra configs composed with overrides."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from charrnn.training.run_folder import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf" / "train")  # train.py's configs
GENERATE_CONF = str(ROOT / "conf" / "generate")  # generate.py's

# Small enough that a few epochs take about a second on 2 CPU cores.
TINY = [
    "model.hidden_size=16",
    "data.seq_length=16",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "trainer.max_epochs=2",
    "trainer.enable_model_summary=false",
]


# The search tests need the `search` extra (optuna), the page's the `serve` extra (starlette;
# both in `.[dev]`): without them, as on a machine set up for training alone, they are not
# collected instead of failing the whole run.
collect_ignore = [path for path, module in (("studies/test_search.py", "optuna"),
                                            ("serve", "starlette"))
                  if importlib.util.find_spec(module) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped without a CUDA GPU; `pytest -m gpu` runs all of them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in a working directory and a corpus cache of its own, so the user's
    outputs/, ~/.cache/charrnn and checkout are never read or written: a relative path, "the
    newest run under outputs/" and the default corpus (data.cache_dir, set by CHARRNN_CACHE)
    all resolve inside them, in the test's process and in the scripts it starts."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    return cwd


def make_corpus(path: Path, n_words: int = 600, seed: int = 0) -> Path:
    """A few thousand characters of pseudo-text, with non-ASCII characters in it."""
    rng = random.Random(seed)
    words = "to be or not that is the question whether tis nobler mind café naïve 日本".split()
    lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(n_words // 10)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt")


def compose_train(overrides: list[str], config_name: str = "train") -> DictConfig:
    """conf/train/train.yaml (or conf/generate/generate.yaml) composed with overrides."""
    register_resolvers()
    config_dir = GENERATE_CONF if config_name == "generate" else CONF
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture
def tiny_cfg(tmp_path: Path, corpus: Path):
    """Compose train.yaml for a tiny run in tmp_path; extra overrides are applied last."""

    def make(*extra: str, run: str = "run") -> DictConfig:
        return compose_train(
            [f"data.path={corpus}", f"run_dir={tmp_path / run}", *TINY, *extra]
        )

    return make


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run train.py / generate.py the way a user does, from `cwd`."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )
