"""A checkpoint file to a model: loaded safely (`weights_only=True`, nothing in the file is ever
run), on a device torch can use. A checkpoint alone is enough to generate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError, check_gpu
from charrnn.models.registry import CharModel, build_model


def check_device(device: str) -> None:
    """Raise a CharRNNError unless `device` names a device torch can use here."""
    try:
        parsed = torch.device(device)
        kind, index = parsed.type, parsed.index
    except (RuntimeError, TypeError):
        kind = index = None
    if kind not in ("cpu", "cuda"):
        raise CharRNNError(
            f"device must be cpu or cuda (cuda:N: one GPU of several), got {device!r}. Set it on "
            "the command line (device=cuda) or in conf/generate/generate.yaml."
        )
    if kind == "cuda":
        check_gpu(f"device={device}", "device=cpu")
        if index is not None and index >= torch.cuda.device_count():
            raise CharRNNError(
                f"device={device}: torch sees {torch.cuda.device_count()} GPU(s), numbered from "
                "0. Use device=cuda (the first) or another number."
            )


def load_model(path: str | Path, device: str = "cpu") -> tuple[CharModel, CharVocab]:
    """Model and vocabulary from a checkpoint alone (loaded with `weights_only=True`)."""
    check_device(device)
    ckpt = load_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    vocab = CharVocab(hparams["vocab"])
    model = build_model(len(vocab), **hparams["model"])
    # The LightningModule keeps the model under `model.`; its metrics hold no weights.
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    model.load_state_dict(state)
    return model.to(device).eval(), vocab


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a charrnn checkpoint on the CPU with `weights_only=True`.

    Files that are not checkpoints, truncated files and pickles that would run code all end in
    a CharRNNError; nothing in the file is ever executed.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CharRNNError(
            f"{key}={path} is not a loadable charrnn checkpoint ({_load_failure(path, err)}). "
            f"Set {key} to a .ckpt file written by train.py (e.g. <run folder>/checkpoints/"
            "last.ckpt)."
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "vocab" not in hparams or "state_dict" not in ckpt:
        raise CharRNNError(
            f"{key}={path} is a PyTorch file but not a charrnn checkpoint (no vocabulary or "
            "weights in it). Set it to a .ckpt file written by train.py."
        )
    return ckpt


def _load_failure(path: str | Path, err: Exception) -> str:
    """Why torch.load failed, in a few words (its own message for a refused object goes on to
    suggest weights_only=False, which would run code from the file)."""
    with open(path, "rb") as file:
        if file.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            return "not a file torch.save writes"
    text = str(err).strip()
    if text.startswith("Weights only load failed"):
        return f"it holds objects a safe, weights-only load refuses: {_refused(text)}"
    return f"truncated or damaged: {text.splitlines()[0]}" if text else type(err).__name__


def _refused(text: str) -> str:
    """What torch's weights-only refusal names, without its advice. Read line by line: torch 2.6
    puts the reason in the advice's paragraph, later versions in one of its own."""
    advice = ("Weights only load failed", "Check the documentation", "(1)", "(2)")
    reasons = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(advice) and "weights_only" not in line:
            reasons.append(line.removeprefix("WeightsUnpickler error: ").split(" Please use")[0])
    return " ".join(reasons) or "objects torch does not allow"
