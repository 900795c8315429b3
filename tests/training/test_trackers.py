"""The `logger` group: choosing trackers, their keys, secrets, and the CSV tracker's contents."""

from __future__ import annotations

import csv
import os
import socket
import time

import pytest

from charrnn.cli import ENTRY_POINTS, prepare_overrides
from charrnn.errors import CharRNNError
from charrnn.training.run import train
from charrnn.training.trackers import check_trackers, masked, selected, take_secret
from tests.conftest import TINY, compose_train, run_script


def test_the_default_is_tensorboard_and_a_list_or_many_chooses_several(corpus):
    assert list(selected(compose_train([]))) == ["tensorboard"]
    assert list(selected(compose_train(["logger=[csv,mlflow]"]))) == ["csv", "mlflow"]
    assert list(selected(compose_train(["logger=many"]))) == ["tensorboard", "csv", "mlflow"]


def test_a_trackers_key_without_its_tracker_names_the_option_to_add(capsys):
    with pytest.raises(SystemExit) as stop:
        prepare_overrides(["logger=csv", "logger.mlflow.run_name=x"],
                          **ENTRY_POINTS["train.py"])
    assert stop.value.code == 2
    assert ("logger.mlflow.run_name is set, but logger=mlflow, whose key it is, is not chosen "
            "(logger=csv). Add logger=mlflow to the command line (or a list: "
            "logger=[csv,mlflow])") in capsys.readouterr().err
    assert prepare_overrides(["logger=many", "logger.mlflow.run_name=x"],
                             **ENTRY_POINTS["train.py"])  # many includes mlflow


def test_a_misspelt_trackers_key_names_the_nearest(corpus):
    with pytest.raises(CharRNNError, match=r"logger.mlflow.experiment is not an argument .* "
                                           r"Did you mean logger.mlflow.experiment_name\?"):
        check_trackers(compose_train(["logger=mlflow", "+logger.mlflow.experiment=x"]))
    with pytest.raises(CharRNNError, match=r"Did you mean logger.csv.flush_logs_every_n_steps"):
        check_trackers(compose_train(["logger=csv", "+logger.csv.flush_every_n_steps=1"]))


def test_a_password_on_the_command_line_goes_to_mlflows_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    arg = "logger.mlflow.tracking_uri=https://alice:s3cret@mlflow.example.org:5000/"
    assert take_secret(arg) == "logger.mlflow.tracking_uri=https://mlflow.example.org:5000/"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert take_secret("model.hidden_size=8") == "model.hidden_size=8"
    assert masked("https://alice:s3cret@host:5000") == "https://***@host:5000"


def test_a_password_in_a_config_file_is_refused(corpus):
    cfg = compose_train(["logger=mlflow",
                         "logger.mlflow.tracking_uri=postgresql://alice:s3cret@db/mlflow"])
    with pytest.raises(CharRNNError, match=r"holds a user or password \(postgresql://\*\*\*@db"):
        check_trackers(cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_refused_in_seconds(corpus):
    port = free_port()  # nothing listens there
    cfg = compose_train(["logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}"])
    start = time.perf_counter()
    with pytest.raises(CharRNNError, match=rf"the MLflow tracking server at http://127.0.0.1:"
                                           rf"{port} \(logger.mlflow.tracking_uri\) does not "
                                           r"answer .* Nothing was trained"):
        check_trackers(cfg)
    assert time.perf_counter() - start < 10


@pytest.mark.slow
def test_an_unreachable_server_stops_train_py_before_training(corpus, tmp_path):
    port = free_port()
    result = run_script("train.py", f"data.path={corpus}", *TINY, "logger=mlflow",
                        f"logger.mlflow.tracking_uri=http://bob:pw@127.0.0.1:{port}",
                        f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (f"the MLflow tracking server at http://127.0.0.1:{port} "
            "(logger.mlflow.tracking_uri) does not answer") in result.stderr
    assert "pw" not in result.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_csv_gets_every_scalar_and_the_config(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=[tensorboard,csv]", "vanishing.every_n_steps=5",
                   "trainer.log_every_n_steps=2")
    train(cfg)
    run = tmp_path / "run"
    with open(run / "metrics.csv") as f:
        columns = next(csv.reader(f))
    for name in ("train/loss", "train/grad_norm", "train/lr", "train/chars_per_s", "val/ppl",
                 "grad_distance_input/k=1", "test/ppl"):
        assert name in columns
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard beside it
