"""The LightningDataModule: the corpus, its vocabulary and split, and the training windows."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from charrnn.data.cache import MappedGather, cached_corpus_array
from charrnn.data.corpus import download_tinyshakespeare, split_sizes, tinyshakespeare_path
from charrnn.data.vocab import CharVocab, read_text
from charrnn.data.windows import EvalWindows, TrainWindows, WindowSampler, whole_batch
from charrnn.errors import CharRNNError, check_int


class CharDataModule(L.LightningDataModule):
    """Owns the corpus, its vocabulary and the contiguous train/val/test split."""

    def __init__(
        self,
        path: str | None = None,
        cache_dir: str = "~/.cache/charrnn",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seq_length: int = 100,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        seed: int = 0,
        random_offset: bool = False,
        contiguous_batches: bool = False,
        memmap: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("data.seq_length", seq_length),
            ("data.batch_size", batch_size),
            ("data.eval_batch_size", eval_batch_size),
        ):
            check_int(name, value, "conf/train/data/")
        fractions = (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction))
        for name, value in fractions:
            if not 0 < value < 1:
                raise CharRNNError(
                    f"{name} must lie strictly between 0 and 1, got {value!r}. Set it in "
                    "conf/train/data/ or on the command line (default 0.1)."
                )
        if val_fraction + test_fraction >= 1:
            raise CharRNNError(
                f"data.val_fraction ({val_fraction}) + data.test_fraction ({test_fraction}) leave "
                "no training data: their sum must be below 1 (the default is 0.1 + 0.1)."
            )
        self.path = path
        self.cache_dir = cache_dir
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seq_length = seq_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.random_offset = random_offset
        self.contiguous_batches = contiguous_batches
        self.memmap = memmap
        self.vocab: CharVocab | None = None
        self.data: torch.Tensor | None = None
        self._gather = None  # reads windows of a memory-mapped corpus (data.memmap=true)

    @property
    def corpus_path(self) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()
        return tinyshakespeare_path(self.cache_dir)

    def prepare_data(self) -> None:
        if self.path is None:
            download_tinyshakespeare(self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:  # idempotent: train.py sets up early to learn the vocabulary
            return
        if self.memmap:
            vocab, tokens = cached_corpus_array(self.corpus_path, self.cache_dir)
            self._gather = MappedGather(tokens)
            data = self._gather.data
        else:
            text = read_text(self.corpus_path)
            vocab = CharVocab.from_text(text)
            data = vocab.encode(text)
            del text
        n_train, n_val, n_test = split_sizes(len(data), self.val_fraction, self.test_fraction)
        need = self.seq_length + 1 + (self.seq_length - 1 if self.random_offset else 0)
        if n_train < need or n_val < 1 or n_test < 1:
            raise CharRNNError(
                f"corpus {self.corpus_path} is too short: {len(data)} characters split "
                f"{n_train}/{n_val}/{n_test} (train/val/test), but one training window of "
                f"data.seq_length={self.seq_length} needs {need} characters and validation and "
                "test at least 1 each. Use a longer text (data.path) or a smaller data.seq_length."
            )
        self.vocab, self.data = vocab, data
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test

    def train_dataloader(self) -> DataLoader:
        sampler = WindowSampler(
            self.n_train, self.seq_length, self.seed, self.random_offset,
            streams=self.batch_size if self.contiguous_batches else None,
        )
        if len(sampler) == 0:
            raise CharRNNError(
                f"data.contiguous_batches needs at least data.batch_size={self.batch_size} "
                f"training windows of {self.seq_length} characters; the training split has "
                f"{self.n_train} characters. Lower data.batch_size or data.seq_length."
            )
        windows = TrainWindows(self.data[: self.n_train], self.seq_length, self._gather)
        return DataLoader(windows, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=whole_batch, pin_memory=self._to_gpu())

    def _eval_loader(self, start: int, end: int) -> DataLoader:
        streams = min(self.eval_batch_size, end - start) if self.contiguous_batches else 1
        windows = EvalWindows(self.data, start, end, self.seq_length, streams, self._gather)
        return DataLoader(windows, batch_size=self.eval_batch_size if streams == 1 else streams,
                          collate_fn=whole_batch, pin_memory=self._to_gpu())

    def _to_gpu(self) -> bool:
        """Whether batches go to a GPU. They are pinned then: a copy from pageable memory may
        wait for the GPU work queued before it (CUDA stages it through pinned memory), so the
        host could not prepare the next step while the GPU runs this one."""
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.n_train, self.n_train + self.n_val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.n_train + self.n_val, len(self.data))
