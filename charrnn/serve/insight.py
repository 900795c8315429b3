"""What the page's memory and vs-counting views need: the hidden units worth watching in a
run (its memory.json, or found now), and a text scored by the model and by counting.

Both read the run's corpus and split (its config.yaml), through charrnn.studies.memory and
charrnn.studies.ngram; each is worked out once per run (or corpus) and kept.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError
from charrnn.generation.sampling import character_losses
from charrnn.models.registry import CharModel
from charrnn.studies.characters import analyse as analyse_characters
from charrnn.studies.memory import correlations, hidden_states, load_run, text_features
from charrnn.studies.mixture import prepare_mixture
from charrnn.studies.ngram import KneserNey, baseline, run_split

UNIT_CHARS = 16_000  # validation characters read to find units when there is no memory.json


class Insight:
    def __init__(self) -> None:
        self._units: dict[Path, dict] = {}
        self._ngrams: dict[Path, tuple[KneserNey, int, dict]] = {}
        self._mixtures: dict[Path, tuple] = {}
        self._characters: dict[Path, dict] = {}
        self._lock = threading.Lock()

    def units(self, folder: Path | None) -> dict[str, Any]:
        """The best unit per feature of the text: from the run's memory report, or found on
        part of its validation split (and kept)."""
        if folder is None:
            raise CharRNNError("this checkpoint is not in a run folder: no corpus to find units "
                               "with; pick a unit by number.")
        with self._lock:
            if folder in self._units:
                return self._units[folder]
        report = folder / "memory.json"
        if report.is_file():
            found = {"units": json.loads(report.read_text())["units"], "source": "memory.json"}
        else:
            data = load_run(folder)
            if not data.model.recurrent:
                raise CharRNNError("a Transformer has no recurrent state to watch.")
            start = data.split.n_train
            piece = data.split.ids[start : start + UNIT_CHARS]
            states, positions = hidden_states(data.model, piece)
            text = data.split.vocab.decode(piece.tolist())
            features = {k: v[positions] for k, v in text_features(text).items()}
            found = {"units": correlations(states, features), "source": "validation split"}
        with self._lock:
            self._units[folder] = found
        return found

    def ngram(self, folder: Path | None) -> tuple[KneserNey, int, dict]:
        """The Kneser-Ney n-gram of the run's corpus (train split, order chosen on validation)."""
        if folder is None:
            raise CharRNNError("this checkpoint is not in a run folder: no corpus to count.")
        with self._lock:
            if folder in self._ngrams:
                return self._ngrams[folder]
        split = run_split(folder)
        found, model = baseline(split)
        counted = (model, found["order"], {"vocab": split.vocab.chars, **{
            k: found[k] for k in ("val_ppl", "test_ppl")}})
        with self._lock:
            self._ngrams[folder] = counted
        return counted

    def characters(self, folder: Path | None) -> dict[str, Any]:
        """What the run's characters became (charrnn.studies.characters), once per run."""
        if folder is None:
            raise CharRNNError("this checkpoint is not in a run folder: nothing to compare its "
                               "characters with (an untrained model of its shape needs its run).")
        return self._once(self._characters, folder, lambda: analyse_characters(folder))

    def mixture(self, folder: Path | None, model: CharModel, vocab: CharVocab):
        """The run's counts, and the order and λ of its mixture chosen on validation (once per
        run: a pass of the model over the validation split)."""
        if folder is None:
            raise CharRNNError("this checkpoint is not in a run folder: no corpus to mix with.")
        return self._once(self._mixtures, folder,
                          lambda: prepare_mixture(folder, model, vocab, None))

    def _once(self, store: dict, folder: Path, compute):
        """store[folder], computed the first time (outside the lock: it may take a while)."""
        with self._lock:
            if folder in store:
                return store[folder]
        found = compute()
        with self._lock:
            store[folder] = found
        return found

    def versus(self, folder: Path | None, model: CharModel, vocab: CharVocab,
               text: str) -> dict[str, Any]:
        """Each character's surprisal (bits) under the model (its state carried through the
        text) and under the n-gram (its context within the text), and both perplexities."""
        ngram, order, info = self.ngram(folder)
        if info["vocab"] != vocab.chars:
            raise CharRNNError("the run's corpus is not the one it was trained on (another "
                               "vocabulary): put data.path of its config.yaml back.")
        unknown = vocab.unknown(text)
        kept = text.translate({ord(c): None for c in unknown})
        if len(kept) < 2:
            raise CharRNNError("the text needs at least 2 characters in the vocabulary.")
        ids = vocab.encode(kept).long()
        model_nats = character_losses(model, ids).double().numpy()
        ngram_nats = -ngram.log_probs(ids.numpy(), np.arange(1, len(ids)))[order - 1]
        return {"text": kept, "unknown_removed": len(text) - len(kept), "order": order,
                "model_ppl": math.exp(model_nats.mean()),
                "ngram_ppl": math.exp(ngram_nats.mean()),
                "model_bits": np.round(model_nats / math.log(2), 3).tolist(),
                "ngram_bits": np.round(ngram_nats / math.log(2), 3).tolist(),
                "ngram_val_ppl": info["val_ppl"], "ngram_test_ppl": info["test_ppl"]}
