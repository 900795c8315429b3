"""The tests never see the user's runs or corpus: run in a checkout where a user has trained."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.generation.test_loading import FLAT_LAYOUT_RUN

# The tests that resolve "the newest run under outputs/" or "the default corpus".
RESOLVING = [
    "tests/generation/test_sampling.py::test_generate_bad_input",
    "tests/test_cli.py::test_generate_without_ckpt_path_uses_the_newest_run",
    "tests/data/test_data.py::test_the_default_corpus_is_the_one_in_the_cache",
]


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under the folders, with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_users_runs_and_corpus_are_neither_seen_nor_touched(tmp_path):
    """A copy of the checkout holding a run in outputs/ (newer than any a test makes) and a
    home whose ~/.cache/charrnn holds another corpus: the tests above pass there, and leave
    both as they were."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "__pycache__", ".pytest_cache", "*.egg-info"))
    run = checkout / "outputs" / "2099-01-01" / "00-00-00"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FLAT_LAYOUT_RUN / "last.ckpt", run / "checkpoints" / "best.ckpt")
    os.utime(run / "checkpoints" / "best.ckpt", (4e9, 4e9))  # newer than anything made today
    home = tmp_path / "home"
    (home / ".cache" / "charrnn").mkdir(parents=True)
    (home / ".cache" / "charrnn" / "tinyshakespeare.txt").write_text("DECOY\n" * 100)
    before = snapshot(checkout / "outputs", home / ".cache" / "charrnn")

    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_CACHE"}
    env["HOME"] = str(home)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *RESOLVING], cwd=checkout, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "deselected" not in result.stdout
    assert snapshot(checkout / "outputs", home / ".cache" / "charrnn") == before
