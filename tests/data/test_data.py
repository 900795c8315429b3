from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from charrnn.data.corpus import split_sizes
from charrnn.data.datamodule import CharDataModule
from charrnn.data.vocab import CharVocab, read_text
from charrnn.data.windows import IGNORE_INDEX
from charrnn.errors import CharRNNError


def test_vocab_round_trip_non_ascii():
    text = "Ünïcödé — 日本語 text, with emoji 🎭 and\nnewlines"
    vocab = CharVocab.from_text(text)
    assert vocab.chars == "".join(sorted(set(text)))
    ids = vocab.encode(text)
    assert ids.dtype == torch.uint8 and ids.ndim == 1 and len(ids) == len(text)
    assert vocab.decode(ids) == text


def test_vocab_dtype_is_smallest_that_fits():
    assert CharVocab.from_text("abc").dtype == torch.uint8
    wide = CharVocab.from_text("".join(chr(0x4E00 + i) for i in range(300)))
    assert wide.dtype == torch.int16
    assert wide.decode(wide.encode(wide.chars[::-1])) == wide.chars[::-1]


def test_vocab_rejects_unknown_characters():
    with pytest.raises(CharRNNError, match="'z'"):
        CharVocab.from_text("abc").encode("abz")


def test_split_sizes_add_up():
    assert split_sizes(1_115_394, 0.1, 0.1) == (892_316, 111_539, 111_539)
    assert sum(split_sizes(1003, 0.15, 0.05)) == 1003


def test_split_is_contiguous_train_first(corpus):
    dm = CharDataModule(path=str(corpus), seq_length=16)
    dm.setup()
    data = dm.vocab.encode(corpus.read_text(encoding="utf-8"))
    assert torch.equal(dm.data, data)
    windows = dm.train_dataloader().dataset
    inputs = torch.cat([windows[i * 16][0] for i in range(len(windows))])
    assert len(inputs) + 1 <= dm.n_train  # the last target is still a training character
    assert torch.equal(inputs, data[: len(inputs)].long())
    val_targets = torch.cat([y[y != IGNORE_INDEX] for _, y in dm.val_dataloader()])
    test_targets = torch.cat([y[y != IGNORE_INDEX] for _, y in dm.test_dataloader()])
    assert torch.equal(val_targets, data[dm.n_train : dm.n_train + dm.n_val].long())
    assert torch.equal(test_targets, data[dm.n_train + dm.n_val :].long())


def alphabet_corpus(tmp_path: Path) -> Path:
    """tmp_path/c.txt: 3000 characters, the alphabet over and over."""
    path = tmp_path / "c.txt"
    path.write_text("".join(chr(97 + i % 26) for i in range(3000)))
    return path


def test_train_loader_batches_are_the_sampled_windows(tmp_path: Path):
    dm = CharDataModule(path=str(alphabet_corpus(tmp_path)), seq_length=10, batch_size=8)
    dm.setup()
    loader = dm.train_dataloader()
    starts = list(loader.sampler)[:8]
    x, y = next(iter(loader))
    assert x.shape == y.shape == (8, 10) and x.dtype == torch.long
    for row, s in enumerate(starts):
        assert torch.equal(x[row], dm.data[s : s + 10].long())
        assert torch.equal(y[row], dm.data[s + 1 : s + 11].long())


def test_batches_are_pinned_when_they_go_to_a_gpu_only(tmp_path: Path):
    dm = CharDataModule(path=str(alphabet_corpus(tmp_path)), seq_length=10, batch_size=8)
    dm.setup()
    loaders = (dm.train_dataloader, dm.val_dataloader, dm.test_dataloader)
    assert not any(loader().pin_memory for loader in loaders)  # no trainer: generate.py
    for device, pinned in (("cpu", False), (torch.device("cuda", 0), True)):
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert [loader().pin_memory for loader in loaders] == [pinned] * 3


@pytest.mark.parametrize("options", [{}, {"memmap": True}, {"contiguous_batches": True},
                                     {"random_offset": True}])
def test_every_batch_is_contiguous(tmp_path: Path, options: dict):
    """A non-contiguous batch reaches a GPU through a pageable copy, which waits for all queued
    GPU work: the host could not prepare the next step while the GPU runs this one."""
    dm = CharDataModule(path=str(alphabet_corpus(tmp_path)), seq_length=10, batch_size=8,
                        cache_dir=str(tmp_path / "cache"), **options)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.is_contiguous() and y.is_contiguous()


def test_missing_empty_and_non_utf8_files(tmp_path: Path):
    with pytest.raises(CharRNNError, match="not found.*data.path"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CharRNNError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("line one\nna\xefve".encode("latin-1"))
    with pytest.raises(CharRNNError, match=r"offset 11 \(line 2, column 3\)"):
        read_text(tmp_path / "latin1.txt")


def test_corpus_too_short_for_seq_length(tmp_path: Path):
    (tmp_path / "short.txt").write_text("x" * 100)
    dm = CharDataModule(path=str(tmp_path / "short.txt"), seq_length=100)
    with pytest.raises(CharRNNError, match="too short.*data.seq_length=100 needs 101 characters"):
        dm.setup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_length": 0}, "data.seq_length must be a positive integer"),
        ({"batch_size": -1}, "data.batch_size must be a positive integer"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave no training data"),
        ({"val_fraction": 1.2}, "data.val_fraction must lie strictly between 0 and 1"),
    ],
)
def test_bad_data_settings(kwargs, message):
    with pytest.raises(CharRNNError, match=message):
        CharDataModule(path="unused.txt", **kwargs)


def test_default_corpus_is_downloaded_checked_and_cached(tmp_path, monkeypatch):
    """The download through a file:// URL standing in for the canonical one."""
    import hashlib

    import charrnn.data.corpus as data

    source = tmp_path / "input.txt"
    source.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    monkeypatch.setattr(data, "TINYSHAKESPEARE_URL", source.as_uri())
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256",
                        hashlib.sha256(source.read_bytes()).hexdigest())
    dm = CharDataModule(path=None, cache_dir=str(tmp_path / "cache"), seq_length=16)
    dm.prepare_data()
    cached = tmp_path / "cache" / "tinyshakespeare.txt"
    assert cached.read_bytes() == source.read_bytes()
    dm.setup()
    assert dm.vocab.chars == "".join(sorted(set(source.read_text())))

    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", "0" * 64)  # a corrupted download
    bad = CharDataModule(path=None, cache_dir=str(tmp_path / "other"), seq_length=16)
    with pytest.raises(CharRNNError, match="could not download Tiny Shakespeare"):
        bad.prepare_data()
    assert not any((tmp_path / "other").iterdir())  # nothing that looks complete is left


def test_the_default_corpus_is_the_one_in_the_cache():
    """data.path=null reads tinyshakespeare.txt from data.cache_dir, which the tests point at a
    folder of their own (CHARRNN_CACHE): a corpus in the user's ~/.cache/charrnn is not read."""
    import os

    from tests.conftest import compose_train, make_corpus

    cached = make_corpus(Path(os.environ["CHARRNN_CACHE"]) / "tinyshakespeare.txt", seed=5)
    cfg = compose_train(["data.path=null", "data.seq_length=16"])
    dm = CharDataModule(**cfg.data)
    dm.prepare_data()  # finds it: no download
    dm.setup()
    assert dm.corpus_path == cached
    assert dm.vocab == CharVocab.from_text(cached.read_text(encoding="utf-8"))


@pytest.mark.parametrize("key", ["data.path", "prompt_file", "text_path"])
def test_a_folder_given_as_a_text_file_is_named_a_folder(tmp_path, key):
    (tmp_path / "input.txt").write_text("some text")
    with pytest.raises(CharRNNError, match=(
            f"{key}={tmp_path} is a folder \\(it holds input.txt\\), not a text file. Set {key} "
            f"to a UTF-8 text file, e.g. `{key}={tmp_path}/input.txt`")):
        read_text(tmp_path, key=key)


def test_training_on_a_folder_says_it_is_one(tiny_cfg, tmp_path):
    from charrnn.training.run import train

    with pytest.raises(CharRNNError, match="data.path=.* is a folder"):
        train(tiny_cfg(f"data.path={tmp_path}"))
    assert not (tmp_path / "run").exists()
