"""Searches that share a study across processes, as cluster nodes would: on a real PostgreSQL
server started here, and on a journal file; workers that die; passwords that stay secret."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from charrnn.studies.search_report import load_study
from tests.conftest import ROOT, run_script
from tests.studies.postgres import PASSWORD, Postgres, free_port, why_not
from tests.studies.test_search import TINY_SEARCH

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    server = Postgres()
    try:
        yield server.start()
    finally:
        server.stop()


def search_args(corpus: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=rnn",
            f"data.path={corpus}", *TINY_SEARCH, "hydra.sweeper.pruner.kind=none",
            "hydra.sweeper.heartbeat_s=0.5", *extra]


def start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """A worker whose output goes to files, not pipes: a pipe nobody reads while the test
    waits fills up, and the worker then blocks on its next line."""
    logs = Path(tempfile.mkdtemp(dir=cwd, prefix="worker-"))
    with open(logs / "out", "w") as out, open(logs / "err", "w") as err:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, text=True,
                                start_new_session=True)
    proc.logs = logs
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    return tuple((proc.logs / name).read_text() for name in ("out", "err"))


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    proc.wait(timeout=600)
    out, err = output(proc)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def check_shared(study: optuna.Study, n_trials: int, folders: list[Path]) -> None:
    """Every trial number once, n_trials trials counted, none lost or left running, and each
    counted trial's folder in one of the workers' sweep folders."""
    trials = study.get_trials(deepcopy=False)
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    counted = [t for t in trials if t.state == TrialState.COMPLETE]
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert len(counted) == n_trials
    assert all(t.user_attrs.get("interrupted") or t.user_attrs.get("surplus") for t in others)
    made = {p.name for folder in folders for p in folder.glob("trial-*/checkpoints/last.ckpt")
            for p in [p.parent.parent]}
    assert {f"trial-{t.number}" for t in counted} <= made


def two_workers(corpus, cwd, env, storage_args, folders, n_trials=6, kill_first=False):
    """Two searches started together on one study; with `kill_first`, the first is killed
    (SIGKILL, its process group) while a trial of its own trains. Returns the numbers of the
    trials the first may have been running (one of them is its), and the second's output."""
    args = search_args(corpus, f"hydra.sweeper.n_trials={n_trials}", *storage_args)
    if kill_first:
        args += ["trainer.max_epochs=25", "early_stopping.patience=100"]
    first = start([*args, f"hydra.sweep.dir={folders[0]}"], cwd, env)
    second = start([*args, f"hydra.sweep.dir={folders[1]}"], cwd, env)
    candidates: set[int] = set()
    if kill_first:
        deadline = time.monotonic() + 600  # however busy the CPU: killed while it trains
        while not (candidates := training_in(cwd, folders)):
            if first.poll() is not None or time.monotonic() > deadline:
                for proc in (first, second):
                    proc.kill()
                pytest.fail("no trial of the first worker trained; its output:\n"
                            + output(first)[1][-3000:] + "\nthe second's:\n"
                            + output(second)[1][-3000:])
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    else:
        finish(first)
    out, _ = finish(second)
    return candidates, out


def training_in(cwd: Path, folders: list[Path]) -> set[int]:
    """Trials training now (a checkpoint written) that the first worker may be running: those in
    its own folder; in a folder both share, the two running trials once there are two (each
    worker runs one trial at a time, so one of them is the first's, whichever got there first).
    """
    def numbers(folder: Path) -> set[int]:
        return {int(p.parent.parent.name.split("-")[1])
                for p in (cwd / folder).glob("trial-*/checkpoints/last.ckpt")}

    if folders[0] != folders[1]:
        return numbers(folders[0])
    if len(numbers(folders[0])) < 2 or not (cwd / folders[0] / "storage.json").is_file():
        return set()
    running = {t.number for t in load_study(cwd / folders[0]).get_trials(
        deepcopy=False, states=(TrialState.RUNNING,))}
    training = running & numbers(folders[0])
    return training if len(training) == 2 else set()


def the_lost_trial(study: optuna.Study, candidates: set[int]) -> optuna.trial.FrozenTrial:
    """The one trial marked interrupted, the killed worker's: failed, and one it may have run."""
    (lost,) = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert lost.number in candidates and lost.state == TrialState.FAIL
    return lost


def test_two_workers_share_a_study_on_postgres(postgres, corpus, tmp_path, monkeypatch):
    postgres.create_database("two")
    monkeypatch.setenv("CHARRNN_STORAGE_PASSWORD", PASSWORD)  # for load_study here
    env = {**os.environ, "CHARRNN_STORAGE_PASSWORD": PASSWORD}
    folders = [Path("outputs/w1"), Path("outputs/w2")]
    two_workers(corpus, tmp_path, env, [f"hydra.sweeper.storage={postgres.url('two')}"],
                folders)
    storage = optuna.storages.RDBStorage(postgres.url("two", password=True))
    study = optuna.load_study(study_name="rnn", storage=storage)
    check_shared(study, 6, [tmp_path / f for f in folders])
    for folder in folders:  # either worker's summary lists them all
        assert "6 trials: 6 complete" in (tmp_path / folder / "summary.md").read_text()
        assert load_study(tmp_path / folder).study_name == "rnn"


def test_a_killed_worker_s_trial_is_failed_and_run_again_on_postgres(postgres, corpus, tmp_path):
    postgres.create_database("kill")
    env = {**os.environ, "CHARRNN_STORAGE_PASSWORD": PASSWORD}
    folders = [Path("outputs/k1"), Path("outputs/k2")]
    candidates, out = two_workers(corpus, tmp_path, env,
                                  [f"hydra.sweeper.storage={postgres.url('kill')}"], folders,
                                  n_trials=4, kill_first=True)
    study = optuna.load_study(study_name="rnn", storage=optuna.storages.RDBStorage(
        postgres.url("kill", password=True)))
    lost = the_lost_trial(study, candidates)
    again = [t for t in study.trials if t.user_attrs.get("rerun_of") == lost.number]
    assert len(again) == 1 and again[0].params == lost.params
    assert f"trials [{lost.number}] were interrupted" in out
    check_shared(study, 4, [tmp_path / f for f in folders])


def test_the_same_on_a_journal_file(corpus, tmp_path):
    """Two workers on one sweep folder (as on NFS), then a worker killed mid-trial."""
    env = dict(os.environ)
    shared = Path("outputs/j")
    two_workers(corpus, tmp_path, env, ["hydra.sweeper.storage=journal"], [shared, shared])
    check_shared(load_study(tmp_path / shared), 6, [tmp_path / shared])
    assert (tmp_path / shared / "study.journal").is_file()
    assert "6 trials: 6 complete" in (tmp_path / shared / "summary.md").read_text()

    killed_folder = Path("outputs/jk")
    candidates, _ = two_workers(corpus, tmp_path, env, ["hydra.sweeper.storage=journal"],
                                [killed_folder, killed_folder], n_trials=4, kill_first=True)
    study = load_study(tmp_path / killed_folder)
    the_lost_trial(study, candidates)
    check_shared(study, 4, [tmp_path / killed_folder])


def test_the_password_is_written_nowhere(postgres, corpus, tmp_path):
    """Typed into the URL on the command line: not in any file the search writes (configs,
    Hydra's folders, summaries, TensorBoard events, the study record), nor in what it
    prints."""
    postgres.create_database("secret")
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_STORAGE_PASSWORD"}
    result = subprocess.run(
        [*search_args(corpus, "hydra.sweeper.n_trials=2", "trainer.max_epochs=1"),
         f"hydra.sweeper.storage={postgres.url('secret', password=True)}",
         "hydra.sweep.dir=outputs/s"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name.startswith("events.out") for p in files)
    leaks = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    assert leaks == [] and PASSWORD not in result.stdout + result.stderr
    record = json.loads((tmp_path / "outputs" / "s" / "storage.json").read_text())
    assert record["storage"] == postgres.url("secret")


def test_bad_storage_settings_exit_2_and_write_nothing(postgres, corpus, tmp_path):
    postgres.create_database("bad")
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_STORAGE_PASSWORD"}
    closed = free_port()
    start_time = time.monotonic()
    result = run_script("train.py", "-m", "hparams_search=rnn", f"data.path={corpus}",
                        f"hydra.sweeper.storage=postgresql+psycopg://charrnn@127.0.0.1:{closed}/x",
                        "hydra.sweep.dir=outputs/a", cwd=tmp_path)
    assert time.monotonic() - start_time < 10 + 5  # + the interpreter's start
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach the study's database at 127.0.0.1:{closed}" in result.stderr
    wrong = postgres.url("bad").replace("charrnn@", "charrnn:not-the-password@")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=rnn",
                             f"data.path={corpus}", f"hydra.sweeper.storage={wrong}",
                             "hydra.sweep.dir=outputs/b"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "refused user charrnn" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.*"))


def test_optuna_dashboard_reads_the_study(corpus, tmp_path):
    """The ecosystem's way to watch a study: optuna-dashboard on loopback, its HTTP API."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="watched", storage=storage)
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2) ** 2, n_trials=3)
    port = free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host",
               "127.0.0.1", "--port", str(port)]
    dashboard = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as response:
                    studies = json.loads(response.read())["study_summaries"]
            except OSError:
                time.sleep(0.3)
        assert studies is not None, "optuna-dashboard did not answer"
        (summary,) = studies
        assert summary["study_name"] == "watched"
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
