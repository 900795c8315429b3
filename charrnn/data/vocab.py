"""Reading UTF-8 text and its character vocabulary (no Lightning import: generation starts fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from charrnn.errors import CharRNNError


class CharVocab:
    """The sorted set of a corpus's characters, with encode/decode."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
            raise ValueError("vocabulary characters must be unique and sorted")
        self.chars = chars
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and other.chars == self.chars

    @property
    def dtype(self) -> torch.dtype:
        """Smallest integer dtype that holds every index of this vocabulary."""
        if len(self) <= 256:
            return torch.uint8
        if len(self) <= 2**15:
            return torch.int16
        return torch.int32

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> torch.Tensor:
        """Text -> 1-D tensor of indices in `self.dtype` (vectorised: no per-character list)."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        idx = np.searchsorted(self._codepoints, codepoints)
        idx = np.minimum(idx, len(self) - 1)
        if not np.array_equal(self._codepoints[idx], codepoints):
            missing = "".join(self.unknown(text))
            raise CharRNNError(f"characters not in the vocabulary: {missing!r}")
        return torch.from_numpy(idx.astype(np.dtype(str(self.dtype).removeprefix("torch."))))

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.chars[i] for i in torch.as_tensor(ids).tolist())


def missing_corpus_error(path: Path, key: str = "data.path") -> CharRNNError:
    if path.is_dir():
        texts = sorted(p.name for p in path.glob("*.txt"))[:3]
        inside = f" (it holds {', '.join(texts)})" if texts else ""
        example = path / (texts[0] if texts else "input.txt")
        return CharRNNError(
            f"{key}={path} is a folder{inside}, not a text file. Set {key} to a UTF-8 text "
            f"file, e.g. `{key}={example}`."
        )
    if key != "data.path":
        return CharRNNError(f"{key}={path}: file not found. Set {key} to an existing UTF-8 "
                            "text file.")
    return CharRNNError(
        f"corpus file not found: {path}. Set data.path to an existing UTF-8 text file "
        "(e.g. `python train.py data.path=my_text.txt`), or leave data.path=null to use Tiny "
        "Shakespeare."
    )


def empty_corpus_error(path: Path, key: str = "data.path") -> CharRNNError:
    what = "corpus file" if key == "data.path" else f"the {key} file"
    return CharRNNError(f"{what} is empty: {path}. Set {key} to a file with text in it.")


def not_utf8_error(path: Path, byte: int, offset: int, line: int, column: int,
                   reason: str, key: str = "data.path") -> CharRNNError:
    what = "corpus file" if key == "data.path" else f"the {key} file"
    return CharRNNError(
        f"{what} is not valid UTF-8: {path}: byte 0x{byte:02x} at offset {offset} "
        f"(line {line}, column {column}) cannot be decoded ({reason}). Convert the file to UTF-8 "
        f"(e.g. `iconv -f latin1 -t utf-8`) or set {key} to another file."
    )


def read_text(path: str | Path, key: str = "data.path") -> str:
    """Read a UTF-8 text file, turning every way it can be unusable into a CharRNNError that
    names the setting (`key`) it came from."""
    path = Path(path)
    if not path.is_file():
        raise missing_corpus_error(path, key)
    raw = path.read_bytes()
    if not raw:
        raise empty_corpus_error(path, key)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise not_utf8_error(path, raw[err.start], err.start, line, column, err.reason,
                             key) from None
