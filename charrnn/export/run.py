"""`python generate.py mode=export`: a checkpoint to one file, written under a temporary name
and renamed, so that a failure leaves nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

from charrnn.errors import CharRNNError, os_error_reason
from charrnn.export.html import page
from charrnn.export.onnx import check_onnx, onnx_model
from charrnn.export.weights import card, cell_of
from charrnn.generation.loading import load_model
from charrnn.training.run_folder import run_folder_of

FORMATS = ("html", "onnx")


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise CharRNNError(
            f"format must be html or onnx, got {format!r}: html writes one page that runs the "
            "model in any browser, onnx a model for onnxruntime and other ONNX runtimes "
            "(conf/generate/generate.yaml, docs/export.md)."
        )
    if format == "onnx":
        check_onnx()


def default_output(checkpoint: Path, format: str) -> Path:
    """model.html / model.onnx in the run folder (beside a checkpoint outside one)."""
    folder = run_folder_of(checkpoint)
    return folder / f"model.{format}" if folder is not None else checkpoint.with_suffix(
        f".{format}")


def export_run(checkpoint: Path, format: str, output: Path | None = None) -> Path:
    """Write the checkpoint's model as `format` to `output` (or the default); returns it."""
    check_format(format)
    model, vocab = load_model(checkpoint)
    cell_of(model)  # a Transformer is refused here, before anything is written
    info = card(model, vocab, checkpoint)
    data = page(model, vocab, info).encode("utf-8") if format == "html" else onnx_model(
        model, vocab, info)
    output = output or default_output(checkpoint, format)
    write_whole(output, data)
    return output


def write_whole(path: Path, data: bytes) -> None:
    """`data` to `path`, or nothing at all there: a temporary name in the same folder, then an
    atomic rename (an existing file is replaced only by a complete one)."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as err:
        raise CharRNNError(f"writing {path} failed ({os_error_reason(err)}); nothing was "
                           "written. Set output to a file in a folder you can write.") from None
    finally:
        partial.unlink(missing_ok=True)
