"""The page's tests share one tiny trained run."""

import pytest

from charrnn.training.run import train


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A tiny trained run under outputs/ of a folder of its own."""
    from tests.conftest import TINY, compose_train, make_corpus

    root = tmp_path_factory.mktemp("served")
    corpus = make_corpus(root / "corpus.txt")
    run = root / "outputs" / "2026-01-01" / "12-00-00"
    train(compose_train([f"data.path={corpus}", f"run_dir={run}", *TINY]))
    return root, run
