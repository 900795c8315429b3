"""The runs a page can pick, and each run's model loaded once, with its batching engine."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from charrnn.data.vocab import CharVocab
from charrnn.generation.loading import load_model
from charrnn.models.registry import CharModel
from charrnn.serve.engine import Engine, Stream
from charrnn.training.run_folder import BEST, CHECKPOINT_DIR, METRICS_FILE, run_folder_of

LOADED = 4  # models kept in memory at once; the least recently used idle one goes first


class Busy(Exception):
    """As many streams run as the server allows (`max_streams`)."""


@dataclass
class Run:
    """A run the page can pick: where its checkpoint is, and what the picker shows of it."""

    id: str
    checkpoint: Path
    info: dict[str, Any]


def describe(checkpoint: Path, run_id: str) -> Run:
    """The picker's line for a checkpoint: cell, size and perplexities from its run folder."""
    folder = run_folder_of(checkpoint)
    info: dict[str, Any] = {"id": run_id}
    if folder is not None and (folder / "config.yaml").is_file():
        model = OmegaConf.load(folder / "config.yaml").get("model", {})
        info.update(cell=model.get("cell"), hidden_size=model.get("hidden_size"),
                    num_layers=model.get("num_layers"))
    if folder is not None and (folder / METRICS_FILE).is_file():
        metrics = json.loads((folder / METRICS_FILE).read_text())
        info.update({k: metrics.get(k) for k in ("best_val_ppl", "test_ppl", "epochs_run")})
    return Run(run_id, checkpoint, info)


def list_runs(outputs: Path, default: Run) -> list[Run]:
    """Every run under `outputs` with a best checkpoint, newest first, and the served one."""
    found = sorted(outputs.glob(f"**/{CHECKPOINT_DIR}/{BEST}"), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    runs = [describe(p, p.parent.parent.relative_to(outputs.parent).as_posix()) for p in found]
    if all(r.checkpoint.resolve() != default.checkpoint.resolve() for r in runs):
        runs.insert(0, default)
    return runs


class Models:
    """The served checkpoint and any run the page picks, each loaded once (`weights_only`),
    with one Engine each; `max_streams` counts the streams of all of them together."""

    def __init__(self, default: Run, outputs: Path, max_streams: int,
                 device: str = "cpu") -> None:
        self.default, self.outputs, self.max_streams = default, outputs, max_streams
        self.device = device
        self._loaded: OrderedDict[str, tuple[CharModel, CharVocab, Engine]] = OrderedDict()
        self._lock = threading.Lock()

    def runs(self) -> list[Run]:
        return list_runs(self.outputs, self.default)

    def run(self, run_id: str | None) -> Run:
        """A listed run (run_id None: the served checkpoint); KeyError for any other id."""
        run_id = run_id or self.default.id
        run = self.default if run_id == self.default.id else next(
            (r for r in self.runs() if r.id == run_id), None)
        if run is None:
            raise KeyError(run_id)
        return run

    def get(self, run_id: str | None) -> tuple[CharModel, CharVocab, Engine]:
        """A run's model, vocabulary and engine (run_id None: the served checkpoint). Only runs
        the picker lists can be loaded: a request never names a file."""
        run_id = run_id or self.default.id
        with self._lock:
            if run_id in self._loaded:
                self._loaded.move_to_end(run_id)
                return self._loaded[run_id]
        model, vocab = load_model(self.run(run_id).checkpoint, self.device)
        with self._lock:
            if run_id not in self._loaded:
                self._loaded[run_id] = (model, vocab, Engine(model, vocab))
                idle = [k for k, (_, _, e) in self._loaded.items() if not e.active()]
                while len(self._loaded) > LOADED and idle:
                    self._loaded.pop(idle.pop(0))[2].close()
            return self._loaded[run_id]

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def active(self) -> int:
        """Streams running or waiting to join, over every loaded model."""
        with self._lock:
            return sum(engine.active() for _, _, engine in self._loaded.values())

    def start(self, engine: Engine, **settings: Any) -> Stream:
        """A new stream on `engine`; Busy when `max_streams` run already, over all models."""
        with self._lock:
            self._check_room()
            return engine.start(**settings)

    def _check_room(self) -> None:
        if sum(e.active() for _, _, e in self._loaded.values()) >= self.max_streams:
            raise Busy(f"{self.max_streams} streams are running (max_streams)")

    def fork(self, engine: Engine, **settings: Any) -> Stream:
        """A fork's stream on `engine` (Engine.fork); Busy as for `start`."""
        with self._lock:
            self._check_room()
            return engine.fork(**settings)

    def close(self) -> None:
        with self._lock:
            for _, _, engine in self._loaded.values():
                engine.close()
            self._loaded.clear()
