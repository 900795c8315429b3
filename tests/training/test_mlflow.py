"""logger=mlflow against a real `mlflow server` on a loopback port (its own SQLite store,
stopped after) and against the local stores; everything read back through MLflow's client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY, run_script
from tests.training.test_trackers import free_port

mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the trackers extra: "
                                              'pip install -e ".[trackers]"')
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1, a SQLite store and an artifact folder of its own."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def artifacts(c, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in c.list_artifacts(run_id, path):
        found += artifacts(c, run_id, item.path) if item.is_dir else [item.path]
    return found


def train_args(corpus: Path, *extra: str) -> list[str]:
    return [f"data.path={corpus}", *TINY, "vanishing.every_n_steps=5",
            "vanishing.image_every_n_steps=5", "trainer.log_every_n_steps=2", *extra]


def test_a_run_reaches_the_server_with_everything_and_no_password(server, corpus, tmp_path):
    """Every scalar, the config as parameters, samples, the picture, metrics.json and the run
    folder; a password typed into the URI is in no file and not on the server."""
    uri_with_password = server.replace("http://", "http://alice:s3cret-pw@")
    run = tmp_path / "run"
    result = run_script("train.py", *train_args(corpus, "logger=[tensorboard,mlflow]",
                        f"logger.mlflow.tracking_uri={uri_with_password}",
                        "logger.mlflow.experiment_name=one run", "mix=ngram",
                        f"run_dir={run}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    c = client(server)
    (found,) = c.search_runs([c.get_experiment_by_name("one run").experiment_id])
    data = found.data
    for name in ("train/loss", "train/grad_norm", "train/lr", "train/chars_per_s", "val/ppl",
                 "grad_distance_input/k_1", "test/ppl", "test/ppl_mixed"):
        assert name in data.metrics, name
    metrics = json.loads((run / "metrics.json").read_text())
    assert data.metrics["test/ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-6)
    assert len(c.get_metric_history(found.info.run_id, "val/ppl")) == 2  # one per epoch
    assert data.params["model.hidden_size"] == "16" and data.params["run_dir"] == str(run)
    assert data.tags["run_dir"] == str(run) and found.info.status == "FINISHED"
    files = artifacts(c, found.info.run_id)
    assert "metrics.json" in files
    assert any(f.startswith("samples/T_0.5/step-") for f in files)
    assert any(f.startswith("images/grad_distance") for f in files)
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == \
        found.info.run_id
    # the password: nowhere in the run folder, the output, or the server's params and tags
    assert "s3cret" not in result.stdout + result.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert b"s3cret" not in path.read_bytes(), path
    assert "s3cret" not in json.dumps([data.params, data.tags])


def test_a_sweep_is_a_parent_run_with_a_child_per_job(server, corpus, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", *train_args(corpus, "model.hidden_size=8,16",
                        "logger=mlflow", f"logger.mlflow.tracking_uri={server}",
                        "vanishing.every_n_steps=0", f"hydra.sweep.dir={sweep}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    c = client(server)
    experiment = c.get_experiment_by_name("sweep")  # the sweep folder, as given (relative)
    runs = c.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["model.hidden_size"] for r in children) == ["16", "8"]
    assert "summary.md" in artifacts(c, parents[0].info.run_id)
    assert parents[0].info.status == "FINISHED"


def test_a_resumed_run_continues_its_tracker_run(server, corpus, tmp_path):
    run = tmp_path / "run"
    common = [f"logger.mlflow.tracking_uri={server}", "logger.mlflow.experiment_name=resume"]
    first = run_script("train.py", *train_args(corpus, "logger=[mlflow,csv]", *common,
                       "trainer.max_epochs=1", f"hydra.run.dir={run}"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_script("train.py", f"ckpt_path={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    c = client(server)
    (found,) = c.search_runs([c.get_experiment_by_name("resume").experiment_id])
    assert len(c.get_metric_history(found.info.run_id, "val/ppl")) == 2
    assert found.data.params["trainer.max_epochs"] == "1"  # MLflow keeps a parameter ...
    assert found.data.tags["resumed.trainer.max_epochs"] == "2"  # ... what changed: a tag
    rows = (run / "metrics.csv").read_text().splitlines()
    assert sum(",1," in row or row.startswith("1,") for row in rows) >= 1  # epoch 1's rows kept
    assert len([r for r in rows if r.split(",")[0] in ("0", "1")]) >= 2


@pytest.mark.parametrize("store", ["sqlite", "folder"])
def test_the_local_stores(store, corpus, tmp_path):
    """The default (SQLite under outputs/, artifacts beside it) and a file store (a folder)."""
    extra = [] if store == "sqlite" else [f"logger.mlflow.tracking_uri={tmp_path / 'mlruns'}"]
    result = run_script("train.py", *train_args(corpus, "logger=mlflow", *extra,
                        "vanishing.every_n_steps=0", "trainer.max_epochs=1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    uri = (f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}" if store == "sqlite"
           else (tmp_path / "mlruns").as_uri())
    if store == "folder":
        import os

        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    c = client(uri)
    (found,) = c.search_runs([c.get_experiment_by_name("charrnn").experiment_id])
    assert "val/ppl" in found.data.metrics and "metrics.json" in artifacts(c, found.info.run_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["corpus.txt", "outputs", *(["mlruns"] if store == "folder" else [])])


def test_a_searchs_trials_are_children_of_the_search(server, corpus, tmp_path):
    pytest.importorskip("optuna", reason="a search needs the search extra")
    from tests.studies.test_search import search

    result = search(corpus, tmp_path, "hydra.sweeper.n_trials=2", "logger=mlflow",
                    f"logger.mlflow.tracking_uri={server}", f"hydra.sweep.dir={tmp_path / 'find'}")
    assert result.returncode == 0, result.stderr
    c = client(server)
    runs = c.search_runs([c.get_experiment_by_name("find").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all("val/ppl" in r.data.metrics for r in children)
    assert "summary.md" in artifacts(c, parent.info.run_id)
