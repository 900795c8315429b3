"""The encoded corpus cached as a memory-mapped file beside its vocabulary (`data.memmap=true`).

The text is read twice in chunks (the character set, then the indices), so memory stays flat
whatever the corpus size; later runs map the file instead of reading the text. The cache is
rebuilt when the text file's size or modification time changes.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from charrnn.data.vocab import CharVocab, empty_corpus_error, missing_corpus_error, not_utf8_error

CHUNK_BYTES = 1 << 22  # 4 MiB of text at a time
MAX_CODEPOINT = 0x10FFFF


def iter_text_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The UTF-8 text of `path` in pieces, with read_text's error (offset, line, column)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, newlines, last_newline = 0, 0, -1  # bytes read; "\n" seen; offset of the last one
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                at = offset - pending + err.start
                before = err.object[pending : err.start]
                line = newlines + before.count(b"\n") + 1
                start_of_line = (
                    offset + before.rfind(b"\n") + 1 if b"\n" in before else last_newline + 1
                )
                raise not_utf8_error(path, err.object[err.start], at, line, at - start_of_line + 1,
                                     err.reason) from None
            newlines += raw.count(b"\n")
            if b"\n" in raw:
                last_newline = offset + raw.rfind(b"\n")
            offset += len(raw)
            if text:
                yield text
            if not raw:
                return


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _stamp(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_folder(path: Path, cache_dir: str | Path) -> Path:
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "encoded" / f"{path.stem}-{key}"


def _build(path: Path, folder: Path) -> None:
    seen = np.zeros(MAX_CODEPOINT + 1, dtype=bool)
    n = 0
    for chunk in iter_text_chunks(path):
        codepoints = _codepoints(chunk)
        seen[codepoints] = True
        n += len(codepoints)
    if n == 0:
        raise empty_corpus_error(path)
    present = np.flatnonzero(seen)
    vocab = CharVocab("".join(map(chr, present.tolist())))
    np_dtype = np.dtype(str(vocab.dtype).removeprefix("torch."))
    table = np.zeros(MAX_CODEPOINT + 1, dtype=np_dtype)
    table[present] = np.arange(len(present), dtype=np_dtype)

    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"tokens.bin.partial-{os.getpid()}"
    # Plain writes, not a writable mapping: written pages of a mapping count as this process's
    # memory until the end (the encoding's peak RSS grew with the corpus that way).
    with open(partial, "wb") as f:
        for chunk in iter_text_chunks(path):
            f.write(table[_codepoints(chunk)].tobytes())
    os.replace(partial, folder / "tokens.bin")
    # meta.json is written last: a cache without it (an interrupted build) is never used.
    meta = {**_stamp(path), "vocab": vocab.chars, "dtype": np_dtype.name, "length": n}
    (folder / "meta.json.partial").write_text(json.dumps(meta, ensure_ascii=False))
    os.replace(folder / "meta.json.partial", folder / "meta.json")


def cached_corpus(path: str | Path, cache_dir: str | Path) -> tuple[CharVocab, torch.Tensor]:
    """Vocabulary and encoded corpus (a memory-mapped tensor), built once per version of text."""
    vocab, tokens = cached_corpus_array(path, cache_dir)
    return vocab, torch.from_numpy(tokens)


class MappedGather:
    """`data[positions]` for a memory-mapped corpus that leaves no file pages mapped behind.

    The kernel maps file pages in large blocks around each window read, and they count as this
    process's resident memory until unmapped: random windows otherwise make a large corpus as
    large in RSS within a few thousand windows (docs/performance.md). Each row is copied out
    and its block unmapped at once. The data stays in the page cache (the kernel's to reclaim)
    and is mapped again when read; the mapping is private and never written, so nothing is lost.
    """

    BLOCK = 2 << 20  # bytes unmapped around each row: the largest block the kernel maps at once

    def __init__(self, tokens: np.ndarray) -> None:
        self.data = torch.from_numpy(tokens)
        base = tokens.base.obj if isinstance(tokens.base, memoryview) else tokens.base
        releasable = isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")
        self._mmap = base if releasable else None
        self._itemsize = tokens.itemsize
        self._size = len(tokens) * tokens.itemsize

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: (B, T) indices -> (B, T) tokens, like data[positions]."""
        if self._mmap is None:
            return self.data[positions]
        out = torch.empty(positions.shape, dtype=self.data.dtype)
        for i, row in enumerate(positions):
            out[i] = self.data[row]
            lo = int(row.min()) * self._itemsize // self.BLOCK * self.BLOCK
            hi = min(-(-(int(row.max()) + 1) * self._itemsize // self.BLOCK) * self.BLOCK,
                     self._size)
            self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return out


def cached_corpus_array(path: str | Path, cache_dir: str | Path) -> tuple[CharVocab, np.ndarray]:
    """cached_corpus's numpy form: the array keeps its mapping (for MappedGather)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise missing_corpus_error(path)
    folder = cache_folder(path, cache_dir)
    meta_file = folder / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    if meta is None or {k: meta.get(k) for k in ("source", "size", "mtime_ns")} != _stamp(path):
        meta_file.unlink(missing_ok=True)
        _build(path, folder)
        meta = json.loads(meta_file.read_text())
    return CharVocab(meta["vocab"]), _map(folder / "tokens.bin", meta["dtype"])


def _map(path: Path, dtype: str) -> np.ndarray:
    """The file as an array, read from disk page by page as it is used.

    Copy-on-write (nothing is ever written back), and MADV_RANDOM: training reads small windows
    all over the file, and the kernel's default read-ahead around each one would pull in (and
    keep resident) far more of the file than is used.
    """
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype)
