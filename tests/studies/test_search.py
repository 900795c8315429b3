"""Optuna search through the real entry point: trials, pruning, failures, continuing, reports."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from charrnn.errors import CharRNNError
from charrnn.studies.search import distribution, search_space
from charrnn.studies.search_report import load_study
from tests.conftest import CONF, ROOT, compose_train, run_script

# A tiny search: 16-unit RNNs on a tiny corpus, a second or two per trial.
TINY_SEARCH = ["data.batch_size=8", "data.seq_length=16", "data.eval_batch_size=32",
               "trainer.enable_model_summary=false", "trainer.max_epochs=3",
               "model.hidden_size=choice(8, 16)", "hydra.sweeper.pruner.n_startup_trials=1",
               "hydra.sweeper.pruner.n_warmup_steps=0"]


def search(corpus: Path, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_script("train.py", "-m", "hparams_search=rnn", f"data.path={corpus}",
                      *TINY_SEARCH, *overrides, cwd=cwd)


@pytest.mark.parametrize("name", ["lstm", "rnn"])
def test_search_configs_compose(name):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSearchSweeper") and sweeper.study_name == name
    assert cfg.test is False  # the objective is validation; the test split is never scored
    assert cfg.hydra.sweep._get_node("subdir")._value() == "trial-${search.trial}"
    space, fixed = search_space(dict(sweeper.params))
    assert "module.lr" in space and space["module.lr"].log and not fixed
    if name == "lstm":
        assert cfg.model.cell == "lstm" and {"model.weight_drop", "model.locked_dropout",
                                             "model.embedding_dropout"} <= set(space)
    else:
        assert cfg.model.cell == "rnn" and {"model.hidden_size", "data.seq_length",
                                            "model.dropout"} <= set(space)


def test_search_space_syntax():
    assert distribution("a", "tag(log, interval(1e-4, 1e-2))") == FloatDistribution(
        1e-4, 1e-2, log=True)
    assert distribution("a", "int(interval(1, 3))") == IntDistribution(1, 3)
    assert distribution("a", "range(50, 201, 50)") == IntDistribution(50, 200, step=50)
    assert distribution("a", "choice(lstm, gru)") == CategoricalDistribution(["lstm", "gru"])
    assert distribution("a", "0.5") is None
    with pytest.raises(CharRNNError, match="does not parse"):
        distribution("a", "interval(1,")
    with pytest.raises(CharRNNError, match="the search space is empty"):
        search_space({})


@pytest.mark.slow
def test_search_runs_trials_records_failures_and_reports(corpus, tmp_path):
    """Four trials, one of them with a value that fails: the search goes on, the study holds
    every trial, each trial is a run folder, and the summary lists them best first with the
    best trial's command, which composes."""
    result = search(corpus, tmp_path, "hydra.sweeper.n_trials=4",
                    "model.dropout=choice(0.0, 1.5)", "hydra.sweep.dir=outputs/s")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "s"
    study = load_study(sweep)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.FAIL in states and TrialState.COMPLETE in states
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert "model.dropout must be a number in [0, 1)" in failed.user_attrs["error"]
    for trial in study.trials:
        folder = sweep / f"trial-{trial.number}"
        if trial.state == TrialState.COMPLETE:
            assert (folder / "metrics.json").is_file() and (folder / "checkpoints").is_dir()
            assert len(trial.intermediate_values) == 3  # val/loss after every epoch
            assert '"test_ppl": null' in (folder / "metrics.json").read_text()
    summary = (sweep / "summary.md").read_text()
    assert "4 trials:" in summary and "| failed |" in summary
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,") and len(rows) == 5
    assert rows[1].split(",")[1] == "complete"  # best first
    assert all((sweep / f).stat().st_size > 5_000 for f in ("history.png", "importances.png"))
    command = next(line for line in summary.splitlines() if line.startswith("python train.py"))
    assert "search." not in command and "hparams_search" not in command
    overrides = [o.strip("'") for o in command.split()[2:]]
    assert "trainer.max_epochs=3" not in overrides  # a trial's budget, not its model
    cfg = compose_train(overrides)
    best = next(t for t in study.trials if t.state == TrialState.COMPLETE
                and t.value == study.best_value)
    assert cfg.model.hidden_size == best.params["model.hidden_size"]
    # On demand: the same summary again.
    (sweep / "summary.md").unlink()
    report = subprocess.run([sys.executable, "-m", "charrnn.studies.report", str(sweep)],
                            capture_output=True, text=True)
    assert report.returncode == 0 and (sweep / "summary.md").read_text() == summary


@pytest.mark.slow
def test_pruned_trials_keep_their_folders(corpus, tmp_path):
    """The median pruner stops a trial whose val/loss is above the median of the trials before
    it at the same epoch; the pruned trial keeps its run folder."""
    result = search(corpus, tmp_path, "hydra.sweeper.n_trials=6", "trainer.max_epochs=4",
                    "module.lr=choice(0.01, 0.000001)", "hydra.sweep.dir=outputs/s")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(tmp_path / "outputs" / "s")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned
    for trial in pruned:
        (epoch, loss), = list(trial.intermediate_values.items())[-1:]
        assert epoch < 4
        earlier = sorted(t.intermediate_values[epoch] for t in study.trials
                         if t.number < trial.number and epoch in t.intermediate_values)
        assert loss > earlier[len(earlier) // 2 - (len(earlier) % 2 == 0)]  # above the median
        assert (tmp_path / "outputs" / "s" / f"trial-{trial.number}" / "checkpoints"
                / "last.ckpt").is_file()
    assert "| pruned |" in (tmp_path / "outputs" / "s" / "summary.md").read_text()
    # The jobs prune with the sweeper's settings: with a warm-up longer than a trial, never.
    result = search(corpus, tmp_path, "hydra.sweeper.n_trials=6", "trainer.max_epochs=4",
                    "module.lr=choice(0.01, 0.000001)", "hydra.sweep.dir=outputs/w",
                    "hydra.sweeper.pruner.n_warmup_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state for t in load_study(tmp_path / "outputs" / "w").trials]
    assert len(states) == 6 and TrialState.PRUNED not in states


@pytest.mark.slow
def test_a_killed_search_continues_in_its_folder(corpus, tmp_path):
    """kill -9 of the whole search while a trial runs; the same command with study_dir
    continues: the interrupted trial is failed and not counted, new trials get new folders in
    the same sweep folder, and the summary covers them all."""
    args = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=rnn",
            f"data.path={corpus}", *TINY_SEARCH, "trainer.max_epochs=60",
            "early_stopping.patience=200", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.pruner.kind=none"]  # every continued trial must run to the end
    proc = subprocess.Popen([*args, "hydra.sweep.dir=outputs/s"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    sweep = tmp_path / "outputs" / "s"
    deadline = time.monotonic() + 600  # killed only once trial 0 trains, however busy the CPU
    while not list(sweep.glob("trial-0/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline, "trial 0 never trained"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    result = subprocess.run([*args, "trainer.max_epochs=2", f"hydra.sweeper.study_dir={sweep}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2  # trainer.max_epochs changed: another search
    assert "holds another search" in result.stderr
    result = subprocess.run([*args, f"hydra.sweeper.study_dir={sweep}",
                             "hydra.sweeper.n_trials=2", "trainer.max_epochs=60"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(sweep)
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["interrupted"]
    assert [t.state for t in study.trials[1:]] == [TrialState.COMPLETE] * 2
    assert study.trials[1].params == study.trials[0].params  # run again with its settings
    assert study.trials[1].user_attrs["rerun_of"] == 0
    assert sorted(p.name for p in sweep.glob("trial-*")) == ["trial-0", "trial-1", "trial-2"]
    assert "Interrupted when the search was stopped" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_continues_the_search_and_it_does(corpus, tmp_path):
    """A real SIGINT while trial 1 trains: exit 130 with the command to continue; that command,
    run as printed, finishes the search: every finished trial once, the interrupted one run
    again with its settings, and summary.md lists n_trials trials."""
    import shlex

    args = ["train.py", "-m", "hparams_search=rnn", f"data.path={corpus}", *TINY_SEARCH,
            "trainer.max_epochs=40", "early_stopping.patience=100", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner.kind=none", "hydra.sweep.dir=outputs/s"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args[1:]], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite run in the background would start it with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sweep = tmp_path / "outputs" / "s"
    # Ctrl-C only once trial 1 trains, however long trial 0 takes on a busy machine
    deadline = time.monotonic() + 600
    while not list(sweep.glob("trial-1/checkpoints/last.ckpt")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"trial 1 never trained:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    (command,) = [line.strip() for line in stderr.splitlines()
                  if line.strip().startswith("python ")]
    assert command.endswith("hydra.sweeper.study_dir=outputs/s")
    assert "hydra.sweep.dir" not in command
    tokens = shlex.split(command)
    assert tokens[1] == str(ROOT / "train.py")  # the script as it was started
    result = subprocess.run([sys.executable, *tokens[1:]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(sweep)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                      TrialState.COMPLETE]
    assert study.trials[1].user_attrs["interrupted"]
    assert study.trials[2].params == study.trials[1].params
    summary = (sweep / "summary.md").read_text()
    assert summary.count("| complete |") == 3 and "3 trials: 3 complete" in summary
    assert "run again with the same settings: trial 1." in summary


@pytest.mark.slow
def test_two_searches_never_share_a_study(corpus, tmp_path):
    sweep = tmp_path / "outputs" / "s"
    sweep.mkdir(parents=True)
    result = search(corpus, tmp_path, f"hydra.sweeper.study_dir={sweep}")
    assert result.returncode == 2 and "holds no study.db" in result.stderr
    optuna.create_study(study_name="rnn", storage=f"sqlite:///{sweep / 'study.db'}")
    result = search(corpus, tmp_path, "hydra.sweep.dir=outputs/s")
    assert result.returncode == 2 and "already exists: this folder holds another search" in (
        result.stderr)
    result = run_script("train.py", "-m", "hparams_search=lstm", f"data.path={corpus}",
                        f"hydra.sweeper.study_dir={sweep}", cwd=tmp_path)
    assert result.returncode == 2 and "holds the search rnn, not lstm" in result.stderr
    with open(sweep / "study.lock", "w") as lock:  # a search running in that folder
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        result = search(corpus, tmp_path, f"hydra.sweeper.study_dir={sweep}")
    assert result.returncode == 2 and "another search is running" in result.stderr
    assert not list(sweep.glob("trial-*"))


@pytest.mark.slow
def test_max_time_stops_after_a_whole_trial(corpus, tmp_path):
    result = search(corpus, tmp_path, "hydra.sweeper.n_trials=20", "hydra.sweeper.max_time=0.1",
                    "hydra.sweep.dir=outputs/s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hydra.sweeper.max_time" in result.stdout
    study = load_study(tmp_path / "outputs" / "s")
    assert len(study.trials) == 1 and study.trials[0].state == TrialState.COMPLETE
