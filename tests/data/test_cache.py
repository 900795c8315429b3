import os

import pytest
import torch

from charrnn.data.cache import cache_folder, cached_corpus, iter_text_chunks
from charrnn.data.datamodule import CharDataModule
from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError


def test_cache_matches_in_memory_encoding_and_is_memory_mapped(corpus, tmp_path):
    text = corpus.read_text(encoding="utf-8")
    vocab, data = cached_corpus(corpus, tmp_path / "cache")
    assert vocab == CharVocab.from_text(text)
    assert torch.equal(data, vocab.encode(text)) and data.dtype == torch.uint8
    folder = cache_folder(corpus.resolve(), tmp_path / "cache")
    assert (folder / "tokens.bin").stat().st_size == len(text)  # one byte per character


def test_cache_is_reused_and_rebuilt_when_the_text_changes(corpus, tmp_path):
    cached_corpus(corpus, tmp_path / "cache")
    tokens = cache_folder(corpus.resolve(), tmp_path / "cache") / "tokens.bin"
    built = tokens.stat().st_mtime_ns
    cached_corpus(corpus, tmp_path / "cache")
    assert tokens.stat().st_mtime_ns == built  # reused

    corpus.write_text(corpus.read_text(encoding="utf-8") + "Zebra!", encoding="utf-8")
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    vocab, data = cached_corpus(corpus, tmp_path / "cache")
    assert "Z" in vocab.chars and vocab.decode(data[-6:]) == "Zebra!"  # rebuilt


def test_chunked_reading_splits_multibyte_characters_safely(tmp_path):
    path = tmp_path / "t.txt"
    text = "日本語のテキスト\n" * 50
    path.write_text(text, encoding="utf-8")
    assert "".join(iter_text_chunks(path, chunk_bytes=7)) == text


def test_chunked_reading_reports_where_bytes_are_not_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"line one\nline two\nna" + b"\xef" + b"ve\n")
    with pytest.raises(CharRNNError, match=r"offset 20 \(line 3, column 3\)"):
        list(iter_text_chunks(path, chunk_bytes=5))


def test_interrupted_build_is_never_used(corpus, tmp_path):
    folder = cache_folder(corpus.resolve(), tmp_path / "cache")
    folder.mkdir(parents=True)
    (folder / "tokens.bin").write_bytes(b"garbage")  # no meta.json: an interrupted build
    vocab, data = cached_corpus(corpus, tmp_path / "cache")
    assert vocab.decode(data[:20]) == corpus.read_text(encoding="utf-8")[:20]


def test_datamodule_with_memmap_gives_the_same_batches(corpus, tmp_path):
    plain = CharDataModule(path=str(corpus), seq_length=16)
    mapped = CharDataModule(path=str(corpus), seq_length=16, memmap=True,
                            cache_dir=str(tmp_path / "cache"))
    plain.setup()
    mapped.setup()
    for a, b in zip(plain.val_dataloader(), mapped.val_dataloader()):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(plain.train_dataloader(), mapped.train_dataloader()):
        assert torch.equal(a[0], b[0])


def _rss_file_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_reading_mapped_windows_leaves_no_file_pages_resident(tmp_path):
    # 24 MB of text; ~1000 random windows would map most of it without the release.
    path = tmp_path / "big.txt"
    line = "".join(chr(97 + i % 26) for i in range(999)) + "\n"
    path.write_text(line * 24_000)
    dm = CharDataModule(path=str(path), seq_length=100, batch_size=64, memmap=True,
                        cache_dir=str(tmp_path / "cache"))
    dm.setup()
    loader = iter(dm.train_dataloader())
    before = _rss_file_mb()
    batches = [next(loader) for _ in range(16)]
    assert _rss_file_mb() - before < 6  # a block or two mapped at a time, not the 24 MB
    x, y = batches[0]
    starts = list(dm.train_dataloader().sampler)[:64]
    assert torch.equal(x[5], dm.data[starts[5] : starts[5] + 100].long())
    assert torch.equal(y[5], dm.data[starts[5] + 1 : starts[5] + 101].long())


@pytest.mark.slow
def test_the_corpus_benchmark_runs_tiny(tmp_path):
    """`python -m charrnn.bench --only corpus`: encoding and training from the cache as the
    corpus grows, each in a process of its own (tiny sizes)."""
    from charrnn.bench import main as bench

    results = bench(["--tiny", "--only", "corpus", "--json", str(tmp_path / "bench.json")])
    for size in ("0.1", "0.2"):
        assert results[f"corpus_{size}mb_encode_s"] > 0
        assert results[f"corpus_{size}mb_train_peak_rss_mb"] > 0
