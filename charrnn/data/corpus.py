"""The corpus: Tiny Shakespeare downloaded and checked, the contiguous train/val/test split
(no Lightning import: generate.py scores a split without it)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from charrnn.data.vocab import read_text
from charrnn.errors import CharRNNError

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def tinyshakespeare_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "tinyshakespeare.txt"


def download_tinyshakespeare(cache_dir: str | Path) -> Path:
    """Download Tiny Shakespeare into `cache_dir` once, checking its SHA-256.

    torch.hub writes to a temporary file and moves it into place only after the hash matched,
    so an interrupted download never looks complete.
    """
    dest = tinyshakespeare_path(cache_dir)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(
            TINYSHAKESPEARE_URL, str(dest), hash_prefix=TINYSHAKESPEARE_SHA256, progress=True
        )
    except Exception as err:  # URLError, RuntimeError(hash mismatch), OSError ...
        raise CharRNNError(
            f"could not download Tiny Shakespeare from {TINYSHAKESPEARE_URL} into {dest}: {err}. "
            "Download it by hand and set data.path to the file, or set data.cache_dir to a "
            "folder that already holds tinyshakespeare.txt."
        ) from None
    return dest


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Character counts of the contiguous (train, val, test) split, train first."""
    n_val = int(n * val_fraction)
    n_test = int(n * test_fraction)
    return n - n_val - n_test, n_val, n_test


SPLITS = ("val", "test")


def split_text(run_dir: Path, split: str) -> str:
    """The text of a run's val or test split, read from the corpus its config.yaml names.

    The character just before the split comes first (the input of the split's first character),
    so scoring the result predicts exactly the split's characters, as validation and test do.
    """
    if split not in SPLITS:
        raise CharRNNError(
            f"split must be val or test (or null to score text_path), got {split!r}."
        )
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CharRNNError(
            f"split={split} needs the run's config.yaml to find its corpus and split, and "
            f"{config} does not exist. Set ckpt_path to the run folder (or a .ckpt inside its "
            "checkpoints/), or score a file with text_path=... instead."
        )
    data = OmegaConf.load(config).data
    path = Path(data.path).expanduser() if data.path else tinyshakespeare_path(data.cache_dir)
    if not path.is_file():
        raise CharRNNError(
            f"the corpus of the run in {run_dir} is not at {path} (data.path / data.cache_dir in "
            f"its config.yaml). Put it back there, or score a file with text_path=... instead."
        )
    text = read_text(path)
    n_train, n_val, _ = split_sizes(len(text), data.val_fraction, data.test_fraction)
    start, end = (n_train, n_train + n_val) if split == "val" else (n_train + n_val, len(text))
    return text[start - 1 : end]
