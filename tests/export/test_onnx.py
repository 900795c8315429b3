"""The ONNX model against torch, run by onnxruntime on the CPU."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from charrnn.export.run import export_run
from charrnn.generation.loading import load_model
from charrnn.models.registry import initial_state

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra: "
                          "pip install -e '.[dev]'")
STEPS = 500
TOLERANCE = 1e-5  # float32 both sides; the largest difference seen is printed by -s


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_onnxruntime_steps_as_torch_does_for_500_characters(runs, tmp_path, cell, batch):
    ckpt = runs[cell] / "checkpoints" / "best.ckpt"
    path = export_run(ckpt, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model, vocab = load_model(ckpt)
    lstm = cell == "lstm"
    assert [i.name for i in session.get_inputs()] == ["chars", "h", *(["c"] if lstm else [])]
    assert [o.name for o in session.get_outputs()] == \
        ["logits", "h_out", *(["c_out"] if lstm else [])]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["vocab"]) == vocab.chars
    assert json.loads(meta["charrnn"])["cell"] == cell

    chars = torch.randint(len(vocab), (batch, STEPS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = model(chars, initial_state(model, batch))
    state = [np.zeros((model.rnn.num_layers, batch, model.rnn.hidden_size), np.float32)
             for _ in range(2 if lstm else 1)]
    worst = 0.0
    for t in range(STEPS):  # one character at a time, the state fed back, as generation runs
        logits, *state = session.run(None, {"chars": chars[:, t : t + 1].numpy(),
                                            **dict(zip(("h", "c"), state))})
        worst = max(worst, float(np.abs(logits[:, 0] - expected[:, t].numpy()).max()))
    print(f"{cell}, batch {batch}: largest logit difference over {STEPS} steps {worst:.2e}")
    assert worst < TOLERANCE
    # and all 500 characters in one call
    whole = session.run(None, {"chars": chars.numpy(), **{
        name: np.zeros_like(s) for name, s in zip(("h", "c"), state)}})[0]
    assert np.abs(whole - expected.numpy()).max() < TOLERANCE


def test_the_script_in_the_docs_generates_with_onnxruntime_and_numpy_alone(runs, hermetic):
    """docs/export.md's script, as printed there (its prompt one of this corpus's words)."""
    from tests.conftest import ROOT

    docs = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    script = docs.split("```python\n")[1].split("```")[0]
    assert len(script.splitlines()) <= 20
    assert "import torch" not in script and "charrnn" not in script
    export_run(runs["gru"] / "checkpoints" / "best.ckpt", "onnx", hermetic / "romeo.onnx")
    (hermetic / "script.py").write_text(script.replace('"ROMEO:"', '"to be"'))
    result = subprocess.run([sys.executable, "script.py"], cwd=hermetic, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("to be") and len(result.stdout) == len("to be") + 300 + 1
