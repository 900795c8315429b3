"""The command lines: text overrides, Ctrl-C, one failure path, defaults, each script's studies."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from charrnn.cli import hydra_quote, prepare_overrides
from charrnn.training.run import train
from tests.conftest import CONF, GENERATE_CONF, ROOT, TINY, compose_train, run_script

TEXTS = ["Привет", "ROMEO:", "it's", "a\\b", "ends with \\", "a,b", "x=y", "(oh)", "'quoted'",
         'say "hi"', "back\\'slash", "", "  spaced  ", "日本 café"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_quoted_text_parses_back_to_itself(text):
    parsed = OverridesParser.create().parse_override(f"prompt={hydra_quote(text)}")
    assert parsed.value() == text


def test_prompts_are_quoted_and_other_arguments_kept():
    args = ["-m", "prompt=Привет, мир", "samples.prompt=x", "--cfg", "job", "length=10",
            "prompt='already quoted'", "+prompt=日本"]
    prepared = prepare_overrides(args, text_keys=("prompt",))
    assert prepared == ["-m", "prompt='Привет, мир'", "samples.prompt=x", "--cfg", "job",
                        "length=10", "prompt='already quoted'", "+prompt='日本'"]


def test_an_override_hydra_cannot_read_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_overrides(["data.path=Привет.txt"], text_keys=("prompt",))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: the override 'data.path=Привет.txt' cannot be read" in err
    assert "'data.path=\"Привет.txt\"'" in err


@pytest.mark.parametrize("conf, arg, says", [
    (CONF, "model.hidden_sise=256", "unknown config key 'model.hidden_sise': no file in "
                                    "conf/train sets it. Did you mean model.hidden_size?"),
    (CONF, "lr=0.01", "Did you mean module.lr?"),
    (CONF, "model.foo=1", "the keys of model are cell, context_length, dropout"),
    (CONF, "model=lstm", "unknown model=lstm: the options of model are rnn (the files in "
                         "conf/train/model)"),
    (CONF, "experiment=cells,hidden", "unknown experiment=hidden"),
    (GENERATE_CONF, "tempreature=0.5", "Did you mean temperature?"),
    (GENERATE_CONF, "+tempreature=0.5", "Did you mean temperature?"),  # nothing reads it
])
def test_a_key_or_option_no_config_has_is_named_with_the_nearest(conf, arg, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_overrides([arg], text_keys=("prompt",), conf_dir=Path(conf),
                          additions=conf == CONF)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_keys_of_any_config_file_additions_and_hydras_own_pass():
    args = ["-m", "experiment=cells,hidden_size", "cells.hidden_size.rnn=7", "+model.extra=1",
            "hparams_search=glob(*)",
            "~samples.seed", "hydra.sweeper.params.model.cell=rnn", "launcher=parallel",
            "hydra/launcher=basic", "module.lr=tag(log, interval(1e-4, 1e-2))", "tf32=null"]
    assert prepare_overrides(args, text_keys=(), conf_dir=Path(CONF)) == args


def test_each_entry_point_offers_only_its_own_studies():
    def options(config_dir: str, group: str) -> list[str]:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return GlobalHydra.instance().config_loader().get_group_options(group)

    assert options(CONF, "experiment") == ["cells", "hidden_size", "seq_length"]
    assert options(CONF, "hparams_search") == ["lstm", "rnn"]
    assert options(GENERATE_CONF, "experiment") == ["temperature"]


def test_generate_without_ckpt_path_uses_the_newest_run(tiny_cfg, tmp_path, monkeypatch, capsys):
    from generate import generate

    monkeypatch.chdir(tmp_path)
    cfg = compose_train(["length=5"], config_name="generate")
    with pytest.raises(Exception, match="no run folder under outputs/ has a best checkpoint"):
        generate(cfg, stream=io.StringIO())
    train(tiny_cfg("trainer.max_epochs=1", run="outputs/a"))
    time.sleep(0.05)
    train(tiny_cfg("trainer.max_epochs=1", run="outputs/b"))
    (text,) = generate(compose_train(["length=5"], config_name="generate"), stream=io.StringIO())
    assert len(text) == 5
    assert f"using the newest run, {tmp_path / 'outputs' / 'b'}" in capsys.readouterr().err


@pytest.mark.slow
def test_non_ascii_prompt_and_missing_prompt_file_through_generate_py(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=1"))
    run = tmp_path / "run"
    result = run_script("generate.py", f"ckpt_path={run}", "prompt=日本 café", "length=20",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    prompt = "日本 café"
    assert result.stdout.startswith(prompt) and len(result.stdout[:-1]) == len(prompt) + 20
    result = run_script("generate.py", f"ckpt_path={run}", "prompt_file=missing.txt",
                        cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: prompt_file=" in result.stderr
    assert "missing.txt: file not found. Set prompt_file" in result.stderr


@pytest.mark.slow
def test_ctrl_c_says_what_is_kept_and_exits_130(corpus, tmp_path):
    """A real SIGINT while training: status 130, the run folder, the last saved epoch and the
    command that resumes it; the checkpoint is intact."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), f"data.path={corpus}", *TINY,
         "trainer.max_epochs=100000", "early_stopping.patience=100000", f"hydra.run.dir={run}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell starts background jobs with SIGINT ignored, and a child inherits that: a
        # suite run as `pytest &` would send Ctrl-C to a train.py that cannot hear it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if not (run / "checkpoints" / "last.ckpt").is_file():  # say what the run printed
        proc.kill()
        pytest.fail(f"no checkpoint within 120 s:\n{proc.communicate()[1][-3000:]}")
    time.sleep(0.5)  # a few more epochs
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 60 s after Ctrl-C:\n{proc.communicate()[1][-3000:]}")
    assert proc.returncode == 130, err[-2000:]
    epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] + 1
    assert f"The run folder {run} keeps its checkpoints: last.ckpt holds the end of epoch " \
           f"{epoch}. Resume with:\n  python train.py ckpt_path={run}" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_while_generating_stops_quietly_with_130(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=1"))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "generate.py"), f"ckpt_path={tmp_path / 'run'}",
         "length=100000000", "output=sample.txt"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as above
    )
    first = proc.stdout.read(200)  # generation has started
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert len(first) == 200 and err.endswith("interrupted (sample.txt not written).\n")
    assert "Traceback" not in err and not (tmp_path / "sample.txt").exists()


@pytest.mark.slow
def test_a_sweep_job_failing_with_any_error_is_recorded_and_the_sweep_goes_on(tiny_cfg,
                                                                             tmp_path):
    """generate.py, like train.py: a job that raises something other than a CharRNNError (here
    torch's error for a hand-edited checkpoint whose weights do not fit its model) is listed as
    failed; the others run."""
    train(tiny_cfg("trainer.max_epochs=1"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][name] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "edited.ckpt")
    result = run_script("generate.py", "-m", f"ckpt_path={tmp_path / 'edited.ckpt'},"
                        f"{tmp_path / 'run'}", "length=10", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" in result.stderr  # not a user's mistake: the traceback is shown
    (sweep,) = (tmp_path / "outputs" / "generate").glob("*/*")
    summary = (sweep / "summary.md").read_text()
    assert "| ok |" in summary and "| failed |" in summary
    (failed,) = [p for p in sweep.iterdir() if (p / "error.txt").is_file()]
    assert failed.name.startswith("0_") and "Error" in (failed / "error.txt").read_text()
    assert os.listdir(tmp_path / "outputs") == ["generate"]


def _compose_with_hydra(config_dir: str, name: str, overrides: list[str]):
    from hydra import compose

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("config", "overrides", "hook", "says"), [
    ("train", ["hydra.run.dir=afile/run"], "on_run_start",
     "cannot write into afile/run: a file is in the way: {cwd}/afile is a file, not a folder. "
     "Nothing was written. Set hydra.run.dir to a folder you can write"),
    ("train", [], "on_run_start",  # the default, outputs/<date>/<time>, under a file `outputs`
     "a file is in the way: {cwd}/outputs is a file, not a folder. Nothing was written. "
     "Set hydra.run.dir"),
    ("train", ["hydra.sweep.dir=afile/sweep"], "on_multirun_start",
     "cannot write into afile/sweep: a file is in the way"),
    ("train", ["hparams_search=rnn", "hydra.sweeper.study_dir=afile/s"], "on_multirun_start",
     "Set hydra.sweeper.study_dir to a folder you can write"),
    ("generate", ["hydra.sweep.dir=outputs/x"], "on_multirun_start",
     "cannot write into outputs/x: a file is in the way: {cwd}/outputs is a file"),
])
def test_a_folder_that_cannot_be_written_is_refused_before_hydra_makes_it(
        config, overrides, hook, says, capsys):
    """The Hydra callback both scripts run first: one paragraph, exit 2, nothing created."""
    from charrnn.cli import OutputFolderCheck
    from charrnn.training.run_folder import register_resolvers

    cwd = Path.cwd()  # the test's own
    (cwd / "afile").write_text("")
    (cwd / "outputs").write_text("")
    register_resolvers()
    cfg = _compose_with_hydra(CONF if config == "train" else GENERATE_CONF, config, overrides)
    with pytest.raises(SystemExit) as exit_:
        getattr(OutputFolderCheck(), hook)(config=cfg)
    assert exit_.value.code == 2
    assert says.format(cwd=cwd) in capsys.readouterr().err
    assert sorted(p.name for p in cwd.iterdir()) == ["afile", "outputs"]


def test_a_writable_folder_passes_and_generate_makes_no_run_folder(capsys):
    from charrnn.cli import OutputFolderCheck

    cfg = _compose_with_hydra(CONF, "train", ["hydra.run.dir=new/run"])
    OutputFolderCheck().on_run_start(config=cfg)
    cfg = _compose_with_hydra(GENERATE_CONF, "generate", [])
    OutputFolderCheck(run=False).on_run_start(config=cfg)
    assert not list(Path.cwd().iterdir()) and capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "key"), [
    ("train.py", ["hydra.run.dir=afile/run"], "hydra.run.dir"),
    ("train.py", ["-m", "hydra.sweep.dir=afile/sweep"], "hydra.sweep.dir"),
    ("generate.py", ["-m", "hydra.sweep.dir=afile/sweep", "ckpt_path=x"], "hydra.sweep.dir"),
])
def test_scripts_refuse_a_folder_under_a_file(corpus, tmp_path, script, args, key):
    (tmp_path / "afile").write_text("")
    result = run_script(script, *args, f"data.path={corpus}" if script == "train.py" else "seed=1",
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "a file is in the way" in result.stderr and f"Set {key} to" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "corpus.txt"]
