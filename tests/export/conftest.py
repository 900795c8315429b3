"""The export tests share tiny trained runs: every cell, one-hot and embedded, one and two
layers."""

import pytest

from charrnn.training.run import train

RUNS = {  # name -> model.* overrides
    "rnn": ["model.cell=rnn"],
    "gru": ["model.cell=gru", "model.input=embedding", "model.embedding_dim=8",
            "model.num_layers=2"],
    "lstm": ["model.cell=lstm", "model.num_layers=2"],
}


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{cell: run folder} of tiny trained runs under outputs/ of a folder of their own."""
    from tests.conftest import TINY, compose_train, make_corpus

    root = tmp_path_factory.mktemp("exported")
    corpus = make_corpus(root / "corpus.txt")
    folders = {}
    for name, overrides in RUNS.items():
        folders[name] = root / "outputs" / "2026-01-01" / name
        train(compose_train([f"data.path={corpus}", f"run_dir={folders[name]}", *TINY,
                             *overrides]))
    return folders
