"""End to end: the real configs, real training steps on tiny corpora, the real entry point."""

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charrnn.errors import CharRNNError
from charrnn.studies.report import read_scalars
from charrnn.training.precision import set_tf32
from charrnn.training.run import build_callbacks, prepare, train
from charrnn.training.trainer import NoProfiler, build_trainer
from tests.conftest import TINY, compose_train, make_corpus, run_script


def scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_default_config_is_the_seed_recipe():
    from tests.conftest import compose_train

    cfg = compose_train([])
    assert cfg.model.cell == "rnn" and cfg.model.input == "onehot" and cfg.model.hidden_size == 512
    assert cfg.data.seq_length == 100 and cfg.data.batch_size == 64
    assert cfg.data.val_fraction == 0.1 and cfg.data.test_fraction == 0.1
    assert cfg.module.lr == 1e-3 and cfg.early_stopping.patience == 5
    assert cfg.trainer.gradient_clip_val == 5.0 and cfg.trainer.max_epochs == 50


def test_run_writes_checkpoints_metrics_and_tensorboard(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg())
    run = tmp_path / "run"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["epochs_run"] == 2 and metrics["early_stopped"] is False
    assert metrics["best_epoch"] in (1, 2)
    assert metrics["test_ppl"] == pytest.approx(torch.tensor(metrics["test_loss"]).exp().item())
    assert metrics["train_chars_per_s"] > 0
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["vocab"] == "".join(
        sorted(set((tmp_path / "corpus.txt").read_text(encoding="utf-8")))
    )
    logged = scalars(run)
    steps = len(logged["train/loss"])
    assert steps >= 2 and len(logged["train/grad_norm"]) == steps  # every step
    assert [step for step, _ in read_scalars(run)["train/loss"]] == list(range(steps))  # from 0
    assert all(math.isfinite(v) and v > 0 for v in logged["train/grad_norm"])
    assert len(logged["val/ppl"]) == 2 and len(logged["test/ppl"]) == 1
    assert logged["test/ppl"][0] == pytest.approx(metrics["test_ppl"], rel=1e-5)
    assert "train/chars_per_s" in logged
    # HParams dashboard: the settings with the final metrics.
    assert logged["hp/test_ppl"] == [pytest.approx(metrics["test_ppl"])]
    assert {"hp/best_val_ppl", "hp/epochs_run", "hp/train_chars_per_s"} <= set(logged)
    acc = EventAccumulator(str(run))
    acc.Reload()
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"model.hidden_size" in hparams["_hparams_/session_start_info"]
    assert not list(run.glob("version_*")) and not list(run.glob("lightning_logs"))
    # Samples at T = 0.5, 1.0, 1.5 after each validation, indented so line breaks survive.
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    for temperature in (0.5, 1.0, 1.5):
        events = acc.Tensors(f"samples/T={temperature}/text_summary")
        assert len(events) == 2
        text = events[-1].tensor_proto.string_val[0].decode()
        assert len(text) > 300 and all(line.startswith("    ") for line in text.split("\n"))


def test_early_stopping_fires(tiny_cfg):
    # lr=0 never improves: patience 1 stops after the second validation.
    metrics = train(tiny_cfg("module.lr=0.0", "early_stopping.patience=1", "trainer.max_epochs=10"))
    assert metrics["early_stopped"] is True and metrics["epochs_run"] == 2


def test_resume_matches_an_uninterrupted_run(tiny_cfg, tmp_path):
    """Stopped after epoch 1 and resumed, a run ends with exactly the weights of one that never
    stopped: the batch order depends only on (seed, epoch) and the model has no dropout, so
    every operation is repeated in the same order on the same CPU."""
    train(tiny_cfg("trainer.max_epochs=3", run="whole"))
    first = train(tiny_cfg("trainer.max_epochs=1", run="split"))
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    saved = checkpoint["callbacks"]["SpeedMonitor"]["wall_seconds"]
    assert 0 < saved <= first["wall_time_s"] + 0.05  # metrics.json rounds to 0.1 s
    # Pretend the first part took 1000 s: wall_time_s covers the whole run, that time included.
    checkpoint["callbacks"]["SpeedMonitor"]["wall_seconds"] = 1000.0
    torch.save(checkpoint, last)
    start = time.perf_counter()
    second = train(tiny_cfg("trainer.max_epochs=3", f"ckpt_path={last}", run="split"))
    assert 1000 < second["wall_time_s"] <= 1000 + time.perf_counter() - start + 0.05

    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    split = torch.load(last, weights_only=True)
    assert split["epoch"] == whole["epoch"] and split["global_step"] == whole["global_step"]
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, split["state_dict"][name]), name
    adam_w, adam_s = whole["optimizer_states"][0]["state"], split["optimizer_states"][0]["state"]
    for key in adam_w:
        assert torch.equal(adam_w[key]["exp_avg_sq"], adam_s[key]["exp_avg_sq"])
    early = [k for k in whole["callbacks"] if k.startswith("EarlyStopping")][0]
    assert whole["callbacks"][early]["wait_count"] == split["callbacks"][early]["wait_count"]
    # Throughput is summed across the resume: the same characters were trained on.
    assert whole["callbacks"]["SpeedMonitor"]["train_chars"] == (
        split["callbacks"]["SpeedMonitor"]["train_chars"]
    )
    # TensorBoard: one folder, val curve continues to 3 points.
    assert len(scalars(tmp_path / "split")["val/loss"]) == 3


def test_resuming_below_the_epochs_done_is_refused_and_touches_nothing(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=2"))
    before = sorted((p.name, p.stat().st_mtime) for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(CharRNNError, match=r"holds the end of epoch 2, beyond "
                       r"trainer.max_epochs=1\. To train on, raise the limit: .*max_epochs=22"):
        train(tiny_cfg("trainer.max_epochs=1", f"ckpt_path={tmp_path / 'run'}"))
    assert sorted((p.name, p.stat().st_mtime) for p in (tmp_path / "run").rglob("*")) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.seq_length=0"], "data.seq_length must be a positive integer"),
        (["data.batch_size=-2"], "data.batch_size must be a positive integer"),
        (["model.hidden_size=0"], "model.hidden_size must be a positive integer"),
        (["data.val_fraction=0.6", "data.test_fraction=0.4"], "leave no training data"),
        (["module.lr_schedule=cosine"], "unknown module.lr_schedule 'cosine'"),
        (["samples.prompt=@"], "samples.prompt has characters that are not in the vocabulary: '@'"),
        (["vanishing.every_n_steps=-1"], r"every_n_steps must be an integer >= 0 \(0 turns"),
        (["vanishing.image_every_n_steps=1.5"], "vanishing.image_every_n_steps must be an integer"),
        (["vanishing.batch_size=0"], "vanishing.batch_size must be a positive integer"),
        (["trainer.profiler=fast"], "unknown trainer.profiler 'fast': allowed values are null"),
        (["module.lr=-1"], r"module.lr must be a number >= 0 \(0 freezes the weights\), got -1"),
        (["module.lr=fast"], "module.lr must be a number >= 0.*got 'fast'"),
        (["module.lr_factor=1"], r"module.lr_factor must be a number in \(0, 1\)"),
        (["module.lr_patience=-1"], "module.lr_patience must be an integer >= 0"),
        (["early_stopping.patience=-1"], "early_stopping.patience must be an integer >= 0"),
        (["early_stopping.min_delta=-0.1"], "early_stopping.min_delta must be a number >= 0"),
        (["gradients.max_loss_ratio=0"], "gradients.max_loss_ratio must be a number > 0"),
        (["gradients.check_every_n_steps=0"], "gradients.check_every_n_steps must be a positive"),
        (["seed=abc"], "seed must be an integer >= 0"),
        (["torch_threads=0"], "torch_threads must be a positive integer or null"),
        (["trainer.max_epochs=0"], r"trainer.max_epochs must be a positive integer \(or -1"),
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be a number >= 0"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be a positive integer"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval must be a positive integer"),
        (["trainer.val_check_interval=1.5"], r"a fraction of an epoch in \(0, 1\], or null"),
        (["+data.fooo=1"], r"data.fooo is not an argument of charrnn's CharDataModule, which "
                           r"data.\* configures \(its arguments: path, cache_dir"),
        (["+trainer.accumulate_grad_batch=2"], "Did you mean trainer.accumulate_grad_batches?"),
        (["+early_stopping.mode=max"], "early_stopping.mode is not an argument of lightning's"),
        (["+model.foo=1"], "model.foo is a setting of no model: the model.. keys are cell"),
        (["trainer.devices=0"], "Lightning refuses the trainer settings: .*devices=0.* Set the "
                                "trainer.\\* key it names .* conf/train/trainer/default.yaml"),
        (["trainer.accelerator=mps"], r"trainer.accelerator=mps \(Apple's GPU\) is not supported: "
                                      r".* Use trainer.accelerator=cpu \(what auto picks on a Mac"),
    ],
)
def test_bad_settings_fail_before_training(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(CharRNNError, match=message):
        train(tiny_cfg(*overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where there is none")
def test_a_gpu_asked_for_where_torch_sees_none_is_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(CharRNNError, match="trainer.accelerator=gpu asks for a GPU, and torch .* "
                       "sees none. Use trainer.accelerator=auto"):
        train(tiny_cfg("trainer.accelerator=gpu"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_auto_leaves_apples_gpu_for_the_cpu(monkeypatch, tiny_cfg):
    """On a Mac Lightning's auto would pick MPS, which this project does not support: auto
    trains on the CPU there (the model line says where training runs)."""
    from charrnn.training.trainer import resolve_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_accelerator("auto") == "cpu"
    assert resolve_accelerator("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_accelerator("auto") == "auto"  # a CUDA GPU: Lightning's choice


def test_the_default_profiler_is_a_shared_null_context(tiny_cfg):
    cfg = tiny_cfg()
    dm, _, _ = prepare(cfg)
    profiler = build_trainer(cfg, build_callbacks(cfg, dm).all()).profiler
    assert isinstance(profiler, NoProfiler)
    with profiler.profile("outer"), profiler.profile("inner"):  # nested, as Lightning does
        pass
    assert profiler.profile("a") is profiler.profile("b")


def test_a_profiler_reports_where_the_time_goes(tiny_cfg, caplog):
    with caplog.at_level(logging.INFO):
        train(tiny_cfg("trainer.profiler=simple", "trainer.max_epochs=1"))
    assert "Profiler Report" in caplog.text and "run_training_batch" in caplog.text


def test_bad_checkpoints_and_vocab_mismatch(tiny_cfg, tmp_path):
    with pytest.raises(CharRNNError, match="does not exist"):
        train(tiny_cfg(f"ckpt_path={tmp_path / 'missing.ckpt'}"))
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CharRNNError, match="not a loadable charrnn checkpoint"):
        train(tiny_cfg(f"ckpt_path={tmp_path / 'junk.ckpt'}"))
    train(tiny_cfg("trainer.max_epochs=1"))
    other = make_corpus(tmp_path / "other.txt", seed=1)
    other.write_text(other.read_text(encoding="utf-8") + "XYZ", encoding="utf-8")
    with pytest.raises(CharRNNError, match="another vocabulary.*only in the corpus: 'XYZ'"):
        train(tiny_cfg(f"data.path={other}", f"ckpt_path={tmp_path / 'run'}"))
    with pytest.raises(CharRNNError, match=r"model.hidden_size=16 \(config says 32\)"):
        train(tiny_cfg("model.hidden_size=32", f"ckpt_path={tmp_path / 'run'}"))
    # model.kernel only picks the code for the same function: a run resumes under any value.
    train(tiny_cfg("model.kernel=torch", f"ckpt_path={tmp_path / 'run'}"))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("module.lr=0.0", "trainer.max_epochs=3", "early_stopping.patience=10"))
    ckpts = tmp_path / "run" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2
    assert torch.load(ckpts / "best.ckpt", weights_only=True)["epoch"] == 0
    # Throughput covers all three epochs, not the state restored from best.ckpt for testing.
    per_epoch = scalars(tmp_path / "run")["train/chars_per_s"]
    assert len(per_epoch) == 3
    assert min(per_epoch) * 0.9 <= metrics["train_chars_per_s"] <= max(per_epoch) * 1.1


def test_new_run_refuses_a_folder_with_checkpoints(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=1"))
    before = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(CharRNNError, match="already holds checkpoints"):
        train(tiny_cfg())
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.slow
def test_cli_multirun_resume_shorthand_and_clean_root(corpus, tmp_path):
    """train.py as a user runs it: a 2x2 sweep in outputs/multirun, then resume one job by its
    folder; nothing appears in the working directory besides outputs/."""
    tiny = [o for o in TINY if not o.startswith(("model.hidden_size", "data.seq_length"))]
    result = run_script(
        "train.py", "-m", f"data.path={corpus}", "model.hidden_size=8,16",
        "data.seq_length=10,20", "trainer.max_epochs=1", *tiny, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert len(jobs) == 4
    assert all((job / "metrics.json").is_file() for job in jobs)
    assert {p.name for p in tmp_path.iterdir()} == {"outputs", "corpus.txt"}

    job = next(j for j in jobs if "hidden_size-8" in j.name and "seq_length-20" in j.name)
    result = run_script("train.py", f"ckpt_path={job}", "trainer.max_epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["resumed_from"].endswith("last.ckpt")
    # The original overrides (hidden 8, seq 20) were re-applied: the checkpoint shape matched.
    config = (job / "config.yaml").read_text()
    assert "hidden_size: 8" in config and "seq_length: 20" in config
    assert list((job / ".hydra").glob("resume-*/overrides.yaml"))
    assert len(scalars(job)["val/loss"]) == 2
    assert len(list((tmp_path / "outputs").iterdir())) == 1  # no new run folder for the resume


@pytest.mark.slow
def test_cli_names_the_run_folder_it_wrote(corpus, tmp_path):
    """run_dir=... moves the run; the closing line names that folder, not Hydra's."""
    result = run_script("train.py", f"data.path={corpus}", *TINY, "trainer.max_epochs=1",
                        "run_dir=elsewhere", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "elsewhere" / "metrics.json").is_file()
    assert "run folder: elsewhere\n" in result.stdout
    # Lightning's lines once, plain (imported after Hydra's logging, it also logs through it)
    assert (result.stdout + result.stderr).count("GPU available") == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(["data.path=missing.txt"], "corpus file not found", marks=pytest.mark.slow),
        pytest.param(["model.cell=lstmm"], "unknown model.cell 'lstmm'", marks=pytest.mark.slow),
        pytest.param(["trainer.max_epoch=3"], "Did you mean trainer.max_epochs?",  # not "use +"
                     marks=pytest.mark.slow),
    ],
)
def test_cli_bad_input_exits_2_and_leaves_no_run_folder(corpus, tmp_path, overrides, message):
    args = [f"data.path={corpus}", *TINY, *overrides]
    result = run_script("train.py", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not [p for p in outputs.rglob("*") if p.is_file()]


def test_runs_started_in_the_same_second_get_a_folder_each(tmp_path, monkeypatch):
    """The default run folder, outputs/<date>/<time>, is claimed by creating it: a second run
    started in the same second (another process) gets <time>-2 instead of sharing it."""
    from charrnn.training import run_folder as checkpoints

    monkeypatch.setattr(checkpoints, "_CLAIMED", {})
    base = str(tmp_path / "outputs" / "12-00-00")
    first = checkpoints.claim_folder(base)
    assert checkpoints.claim_folder(base) == first == base  # the config resolved again
    checkpoints._CLAIMED.clear()  # as in another process
    second = checkpoints.claim_folder(base)
    assert second == base + "-2" and Path(second).is_dir()


def test_the_model_is_summed_up_in_one_line(tiny_cfg, capsys):
    train(tiny_cfg("trainer.enable_model_summary=true", "trainer.max_epochs=1", "test=false"))
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("model: ")]
    assert re.fullmatch(r"model: CharRNN \(cell=rnn hidden_size=\d+ num_layers=1 input=onehot\), "
                        r"\d+ characters, [\d,]+ parameters \(\d+\.\d MiB\); training on cpu in "
                        r"32-true", line), line
    assert "Trainable params" not in out  # Lightning's table, with its FLOPs column of 0


def test_the_model_line_says_when_bf16_is_emulated(tiny_cfg, capsys, monkeypatch):
    """A CPU with AVX-512 but no bf16 instructions: oneDNN emulates bf16 (3 times slower than
    fp32 for the default model); the run goes on and says so."""
    from charrnn import host

    monkeypatch.setattr(host, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(host, "onednn_has_bf16", lambda: True)
    train(tiny_cfg("trainer.enable_model_summary=true", "trainer.precision=bf16-mixed",
                   "trainer.max_epochs=1", "test=false"))
    assert ("training on cpu in bf16-mixed (emulated: no bf16 instructions found on this CPU, "
            "32-true is faster here)\n") in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.parametrize(("tf32", "note"), [("null", "TF32 in cuDNN, tf32=null"),
                                            ("false", "no TF32, tf32=false")])
def test_on_a_gpu_the_model_line_says_where_tf32_is_on(tiny_cfg, capsys, tf32, note):
    train(tiny_cfg("trainer.accelerator=gpu", "trainer.enable_model_summary=true", f"tf32={tf32}",
                   "trainer.max_epochs=1", "test=false"))
    assert f"training on cuda in 32-true ({note})" in capsys.readouterr().out
    set_tf32(None)  # torch's defaults again


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_a_checkpoint_of_the_flat_package_resumes_exactly(tmp_path):
    """tests/fixtures/flat_layout_run's last.ckpt (2 epochs, written before the modules moved
    into layers) resumed to 3 epochs ends with the weights of a run of 3 epochs today.

    Its first two epochs ran on another CPU, so the weights agree to a tolerance, not bit for
    bit (a resume on one machine is bit-exact: test_resume_matches_an_uninterrupted_run). Float
    sums differ in their last bits between instruction sets; after three epochs the weights of
    this tiny model differed by at most 3e-8 between that CPU and an Intel Xeon, with or without
    AVX-512. 1e-6 leaves room for other CPUs, and is a thousandth of what the third epoch moves
    them (checked below): a lost or repeated step, a missed optimizer state, cannot hide in it.
    """
    from tests.generation.test_loading import FLAT_LAYOUT_RUN

    corpus = shutil.copy(FLAT_LAYOUT_RUN / "corpus.txt", tmp_path / "corpus.txt")
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    shutil.copy(FLAT_LAYOUT_RUN / "last.ckpt", tmp_path / "old" / "checkpoints" / "last.ckpt")
    common = [f"data.path={corpus}", *TINY, "trainer.max_epochs=3"]
    resumed = train(compose_train([*common, f"run_dir={tmp_path / 'old'}",
                                   f"ckpt_path={tmp_path / 'old'}"]))
    assert resumed["epochs_run"] == 3 and resumed["resumed_from"]
    train(compose_train([*common, f"run_dir={tmp_path / 'new'}"]))
    old, new = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
                for run in ("old", "new"))
    before = torch.load(FLAT_LAYOUT_RUN / "last.ckpt", weights_only=True)["state_dict"]
    assert old["global_step"] == new["global_step"]
    tolerance = 1e-6
    for name, tensor in new["state_dict"].items():
        torch.testing.assert_close(old["state_dict"][name], tensor, rtol=0, atol=tolerance,
                                   msg=name)
        assert (tensor - before[name]).abs().max() > 1000 * tolerance, name
