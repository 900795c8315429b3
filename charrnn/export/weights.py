"""A recurrent model's weights and what it is, in a form that other code reads: the tensors by
name, packed as little-endian float32 (base64 for a page), and a card that describes the run."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError
from charrnn.models.registry import CharModel
from charrnn.training.run_folder import METRICS_FILE, run_folder_of

EXPORTED_CELLS = {nn.RNN: "rnn", nn.GRU: "gru", nn.LSTM: "lstm"}


def cell_of(model: CharModel) -> str:
    """rnn, gru or lstm; a CharRNNError for a model an export does not run (the Transformer)."""
    rnn = getattr(model, "rnn", None)
    cell = EXPORTED_CELLS.get(type(rnn))
    if cell is None or getattr(rnn, "nonlinearity", "tanh") != "tanh":
        raise CharRNNError(
            "mode=export writes recurrent models (model.cell=rnn, gru or lstm); this checkpoint "
            "is a Transformer, whose attention over a sliding cache the exported page and ONNX "
            "step do not run. Set ckpt_path to a run of another cell (docs/export.md)."
        )
    return cell


def model_tensors(model: CharModel) -> dict[str, torch.Tensor]:
    """Every tensor the exported step reads, by its name in the checkpoint: the embedding (if
    any), each layer's W_ih, W_hh, b_ih, b_hh (PyTorch's gate order) and the head."""
    cell_of(model)
    names = ["embedding.weight"] if model.embedding is not None else []
    for layer in range(model.rnn.num_layers):
        names += [f"rnn.{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih",
                                                      "bias_hh")]
    names += ["head.weight", "head.bias"]
    state = model.state_dict()
    return {name: state[name].detach().float().cpu() for name in names}


def packed(model: CharModel, vocab: CharVocab) -> dict[str, Any]:
    """The model as JSON for the page: its shape, the vocabulary, and every tensor as a
    [shape, offset] into one base64 string of little-endian float32s."""
    tensors, offset, chunks = {}, 0, []
    for name, tensor in model_tensors(model).items():
        data = tensor.numpy().astype("<f4", copy=False).ravel()
        tensors[name] = [list(tensor.shape), offset]
        offset += data.size
        chunks.append(data.tobytes())
    return {
        "cell": cell_of(model), "input": model.input, "vocab": vocab.chars,
        "hidden_size": model.rnn.hidden_size, "num_layers": model.rnn.num_layers,
        "tensors": tensors, "weights": base64.b64encode(b"".join(chunks)).decode("ascii"),
    }


def card(model: CharModel, vocab: CharVocab, checkpoint: Path) -> dict[str, Any]:
    """What the run is: cell, size, corpus, perplexities (from its run folder where there is
    one), and where and when it was exported from."""
    folder = run_folder_of(checkpoint)
    info: dict[str, Any] = {
        "cell": cell_of(model), "input": model.input, "hidden_size": model.rnn.hidden_size,
        "num_layers": model.rnn.num_layers, "vocab_size": len(vocab),
        "embedding_dim": None if model.embedding is None else model.embedding.embedding_dim,
        "parameters": sum(t.numel() for t in model_tensors(model).values()),
        "corpus": None, "best_val_ppl": None, "test_ppl": None, "epochs_run": None,
        # the run's date/time folders, not the path on this machine: the file is shared
        "run": "/".join((folder or checkpoint).parts[-2:]), "checkpoint": checkpoint.name,
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if folder is not None and (folder / "config.yaml").is_file():
        path = OmegaConf.load(folder / "config.yaml").get("data", {}).get("path")
        info["corpus"] = Path(path).name if path else "Tiny Shakespeare"
    if folder is not None and (folder / METRICS_FILE).is_file():
        metrics = json.loads((folder / METRICS_FILE).read_text())
        info.update({k: metrics.get(k) for k in ("best_val_ppl", "test_ppl", "epochs_run")})
    return info


def unpack(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tensors of a `packed` spec as numpy arrays (what the page decodes, for tests)."""
    flat = np.frombuffer(base64.b64decode(spec["weights"]), dtype="<f4")
    return {name: flat[offset : offset + int(np.prod(shape))].reshape(shape)
            for name, (shape, offset) in spec["tensors"].items()}
