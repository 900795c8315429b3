"""Named studies, launchers and sweep summaries through the real entry points."""

import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.studies.report import summarize
from tests.conftest import CONF, GENERATE_CONF, ROOT, TINY, compose_train, run_script

STUDIES = {
    "hidden_size": ("model.hidden_size", "128,256,512,1024"),
    "seq_length": ("data.seq_length", "25,50,100,200"),
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_training_studies_compose(name):
    from hydra import compose, initialize_config_dir

    key, values = STUDIES[name]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", "trainer.max_epochs=5"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.params[key] == values
    assert cfg.trainer.max_epochs == 5


def test_temperature_study_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=GENERATE_CONF, version_base="1.3"):
        cfg = compose("generate", overrides=["experiment=temperature", "ckpt_path=x"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.params.temperature == "0.5,0.8,1.0,1.2,1.5"


@pytest.mark.parametrize(("launcher", "target"), [
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launcher_configs_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "parallel":
        assert cfg.hydra.launcher.n_jobs == 2
        assert "charrnn_threads_per_job" in str(cfg._get_node("torch_threads")._value())


def test_default_run_has_no_study_or_launcher():
    cfg = compose_train([])
    assert "experiment" not in cfg and "launcher" not in cfg and cfg.torch_threads is None


@pytest.mark.slow
def test_summary_of_a_folder_that_is_not_there_says_so(tmp_path, capsys):
    from charrnn.studies.report import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "missing")])
    assert exit_.value.code == 2
    assert "missing is not a folder: give a sweep folder" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_summary_lists_every_job_and_failed_ones(corpus, tmp_path: Path):
    """A 3-job sweep where one job is forced to fail: the others complete, the summary has one
    row per job with the failure and its error, and the sweep exits non-zero."""
    tiny = [o for o in TINY if not o.startswith("model.hidden_size")]
    result = run_script(
        "train.py", "-m", f"data.path={corpus}", "model.hidden_size=8,-1,16",
        "trainer.max_epochs=1", *tiny, cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    # Job folders are named by the swept key only; the fixed overrides are listed once.
    assert sorted(p.name for p in sweep.glob("*_*") if p.is_dir()) == [
        "0_model.hidden_size-8", "1_model.hidden_size--1", "2_model.hidden_size-16"]
    lines = (sweep / "summary.md").read_text().splitlines()
    assert lines[0].startswith("Every job: `") and "trainer.max_epochs=2" in lines[0]
    assert "data.batch_size=8" in lines[0] and "model.hidden_size" not in lines[0]
    table = lines[2:]
    assert len(table) == 2 + 3 and "trainer.max_epochs" not in "".join(table)
    assert "| ok |" in table[2] and "| ok |" in table[3]
    assert "| failed |" in table[4] and "model.hidden_size must be a positive integer" in table[4]
    csv = (sweep / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("job,status,overrides,test_ppl") and len(csv) == 4
    assert (sweep / "summary.png").stat().st_size > 10_000
    assert "2 of 3 jobs finished" in result.stdout
    # On demand, for the same folder: the same rows.
    rows = summarize(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[0]["test_ppl"] <= rows[1]["test_ppl"]


def test_a_one_epoch_sweep_draws_points(tmp_path, monkeypatch):
    """One validation per job: the curves are points (a line needs two)."""
    import matplotlib.pyplot as plt

    from charrnn.studies import report

    rows = [{"job": f"{i}_a-{i}", "status": "ok", "swept": {"a": str(i)}, "test_ppl": 5.0 + i,
             "overrides": f"a={i} b=2"} for i in range(2)]
    monkeypatch.setattr(report, "read_scalars", lambda folder: {"val/ppl": [(10, 6.0)]})
    drawn = []  # the figures closed (matplotlib < 3.8 also closes "all" on switching backend)
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))
    report.write_plot(rows, tmp_path)
    (figure,) = [fig for fig in drawn if not isinstance(fig, str)]
    curves = figure.axes[1].lines
    assert len(curves) == 2 and all(line.get_marker() == "o" for line in curves)
    assert report.fixed_overrides(rows) == ["b=2"]


@pytest.mark.slow
def test_sweeps_started_in_the_same_second_get_a_folder_each(corpus, tmp_path: Path):
    """Two sweeps claim the same folder name at once (launcher=parallel: each job's worker
    process resolves the folder again): one gets it, the other <name>-2, jobs in their own."""
    tiny = [o for o in TINY if not o.startswith("model.hidden_size")]
    args = ["train.py", "-m", "launcher=parallel", f"data.path={corpus}",
            "model.hidden_size=8,16", "trainer.max_epochs=1", *tiny,
            "hydra.sweep.dir=${charrnn_sweep_dir:outputs/same}"]
    procs = [subprocess.Popen([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["same", "same-2"]
    for sweep in ("same", "same-2"):
        jobs = sorted(p.name for p in (tmp_path / "outputs" / sweep).glob("*_*"))
        assert jobs == ["0_model.hidden_size-8", "1_model.hidden_size-16"]
        assert (tmp_path / "outputs" / sweep / "summary.md").is_file()


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_with_divided_threads(corpus, tmp_path: Path):
    import os

    tiny = [o for o in TINY if not o.startswith("model.hidden_size")]
    result = run_script(
        "train.py", "-m", "launcher=parallel", f"data.path={corpus}", "model.hidden_size=8,16",
        "trainer.max_epochs=1", *tiny, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*_*"))
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    for job in jobs:
        assert f"torch_threads: {expected}" in (job / "config.yaml").read_text()
        assert "launcher" not in job.name
