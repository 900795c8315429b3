"""`python generate.py mode=export`: the files it writes, and bad input refused whole."""

import importlib.util
import os
import re

import pytest

from charrnn.errors import CharRNNError
from charrnn.export import run as export
from charrnn.export.html import page
from charrnn.export.weights import card, model_tensors, packed, unpack
from charrnn.generation.loading import load_model
from charrnn.models.registry import build_model
from tests.conftest import TINY, compose_train, run_script

MAX_PAGE_BYTES = 2_000_000  # the default model's page


def test_the_page_holds_every_weight_and_fetches_nothing(runs, tmp_path):
    ckpt = runs["gru"] / "checkpoints" / "best.ckpt"
    model, vocab = load_model(ckpt)
    spec = packed(model, vocab)
    assert spec["cell"] == "gru" and spec["num_layers"] == 2 and spec["input"] == "embedding"
    for name, array in unpack(spec).items():  # the base64 float32s are the weights, exactly
        assert (model_tensors(model)[name].numpy() == array).all(), name
    info = card(model, vocab, ckpt)
    assert info["best_val_ppl"] > 1 and info["test_ppl"] > 1 and info["corpus"] == "corpus.txt"
    assert info["run"] == "2026-01-01/gru"  # not the path on this machine
    text = page(model, vocab, info)
    # nothing outside the file: no address, no src= or href=, and a policy that fetches nothing
    assert not re.search(r"https?://|\bsrc=|\bhref=", text)
    assert "default-src 'none'" in text
    assert text.count("</script>") == 2  # the model's JSON and the script, neither cut short


def test_the_default_model_page_is_at_most_2_mb(tmp_path):
    from charrnn.data.vocab import CharVocab

    vocab = CharVocab("".join(chr(32 + i) for i in range(65)))  # Tiny Shakespeare has 65
    model = build_model(65, **compose_train([]).model).eval()
    info = {"cell": "rnn", "hidden_size": 512, "run": "x/y"}
    size = len(page(model, vocab, info).encode("utf-8"))
    assert 1_300_000 < size <= MAX_PAGE_BYTES, size


def test_generate_py_exports_into_the_run_folder_or_to_output(runs, tmp_path, hermetic,
                                                              capsys):
    from generate import generate

    run = runs["rnn"]
    result = run_script("generate.py", "mode=export", f"ckpt_path={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "model.html").stat().st_size > 10_000
    assert f"wrote {run / 'model.html'}" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing in the working folder
    if importlib.util.find_spec("onnx"):
        cfg = compose_train(["mode=export", "format=onnx", f"ckpt_path={run}",
                             "output=romeo.onnx"], config_name="generate")
        assert generate(cfg) == hermetic / "romeo.onnx"  # the working folder, as for a user
        assert (hermetic / "romeo.onnx").stat().st_size > 1000
        assert "romeo.onnx" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["format=pdf"], "format must be html or onnx, got 'pdf'"),
    (["output=missing/romeo.html"], "output=missing/romeo.html: the folder .* does not exist"),
    (["output=."], r"output=\. is a folder"),
    (["ckpt_path=nowhere"], "ckpt_path=.*nowhere does not exist"),
])
def test_bad_input_is_refused_before_anything_is_written(runs, hermetic, args, message):
    from generate import generate

    cfg = compose_train(["mode=export", f"ckpt_path={runs['rnn']}", *args],
                        config_name="generate")
    with pytest.raises(CharRNNError, match=message):
        generate(cfg)
    assert list(hermetic.iterdir()) == []


def test_a_transformer_is_refused_in_one_paragraph_and_an_earlier_file_kept(runs, tmp_path):
    from charrnn.training.run import train

    transformer = tmp_path / "outputs" / "t"
    train(compose_train([f"data.path={runs['rnn'].parents[2] / 'corpus.txt'}",
                         f"run_dir={transformer}", *TINY, "trainer.max_epochs=1",
                         "model.cell=transformer", "model.num_heads=2"]))
    (tmp_path / "keep.html").write_text("an earlier export")
    result = run_script("generate.py", "mode=export", f"ckpt_path={transformer}",
                        "output=keep.html", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # one paragraph: one line
    assert error.startswith("error: mode=export writes recurrent models (model.cell=rnn, gru "
                            "or lstm); this checkpoint is a Transformer"), result.stderr
    assert (tmp_path / "keep.html").read_text() == "an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.html", "outputs"]
    assert not list(transformer.glob("model.*"))


def test_a_write_that_fails_leaves_the_earlier_file_and_no_partial_one(runs, tmp_path,
                                                                         monkeypatch):
    target = tmp_path / "romeo.html"
    target.write_text("an earlier export")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CharRNNError, match="the disk is full.*nothing was written"):
        export.export_run(runs["rnn"] / "checkpoints" / "best.ckpt", "html", target)
    assert target.read_text() == "an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["romeo.html"]


def test_onnx_without_the_onnx_package_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(CharRNNError, match=r"pip install -e '\.\[export\]'"):
        export.check_format("onnx")
    export.check_format("html")  # needs nothing more
