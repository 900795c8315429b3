"""The one-run GPU check script: its budget, its refusal of bad input, and (slow) every check,
tiny, on the CPU."""

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from charrnn.gpu_checks import (
    JSON_FILE,
    LOG_FILE,
    NAMES,
    Plan,
    checks,
    default_cache_dir,
    headline,
    main,
    run_check,
)

CHECKS = ("train", "gpu_tests", "profile", "tf32", "cudnn", "overhead", "batch_size",
          "persistent", "recipe")


def test_the_checks_come_most_important_first(tmp_path):
    names = [name for name, _, _ in checks(Plan(tmp_path, "cpu", tmp_path, tiny=True))]
    assert tuple(names) == CHECKS == NAMES


@pytest.mark.slow
def test_a_spent_budget_skips_every_check_and_still_writes_the_report(corpus, tmp_path):
    """Through the command line, as a user runs it: nothing ran, nothing failed, exit 0."""
    done = subprocess.run([sys.executable, "-m", "charrnn.gpu_checks", "--corpus", str(corpus),
                           "--out", str(tmp_path), "--budget-s", "0", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / JSON_FILE).read_text())
    assert report["skipped"] == list(CHECKS) and report["checks"] == {}
    assert report["environment"]["torch"]
    assert (tmp_path / LOG_FILE).is_file()


def test_an_earlier_report_is_never_overwritten(corpus, tmp_path, capsys):
    (tmp_path / JSON_FILE).write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        main(["--corpus", str(corpus), "--out", str(tmp_path), "--budget-s", "0",
              "--device", "cpu"])
    assert exit_.value.code == 2 and "already holds a report" in capsys.readouterr().err
    assert (tmp_path / JSON_FILE).read_text() == "{}"


def test_a_check_out_of_time_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); print('started', flush=True); "
              "time.sleep(60)")
    start = time.monotonic()
    output, status = run_check([sys.executable, "-c", script], timeout=1)
    assert status == "out of time" and "started" in output
    assert time.monotonic() - start < 30
    status_file = f"/proc/{int(pid_file.read_text())}/status"
    time.sleep(0.2)
    if os.path.exists(status_file):  # the worker's own child is gone too, or a zombie
        assert "State:\tZ" in open(status_file).read()


def test_without_a_budget_a_check_runs_to_its_end():
    done = run_check([sys.executable, "-c", "print('done')"], timeout=math.inf)
    assert done == ("done\n", "ok")


def test_the_terminal_line_names_the_answer_of_a_check():
    assert headline({"ratio_b_over_a": 0.9312, "ratio_c_over_a": 1.5, "x": 3}) == \
        ": ratio_b_over_a 0.931; ratio_c_over_a 1.5"
    assert headline({"cudnn_onehot_fp32_persistent": 0.0,
                     "cudnn_embedding128_fp16_persistent": 1.0}) == \
        ": cuDNN's persistent kernel in: embedding128_fp16"
    assert headline({"cudnn_onehot_fp32_persistent": 0.0}) == \
        ": cuDNN's persistent kernel in: none"
    assert headline(None) == headline({"summary": "1 passed"}) == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_a_gpu_the_full_checks_are_refused(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--corpus", str(corpus), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_default_corpus_is_where_train_py_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path))  # data.cache_dir of conf/train/
    assert default_cache_dir() == str(tmp_path)


def test_a_missing_corpus_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out"),
              "--device", "cpu"])
    assert exit_.value.code == 2
    assert "is not a file: give the training text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_check_runs_tiny_on_the_cpu(corpus, tmp_path):
    out = tmp_path / "out"
    report = main(["--tiny", "--device", "cpu", "--corpus", str(corpus), "--out", str(out)])
    assert report["skipped"] == []
    assert {name: c["status"] for name, c in report["checks"].items()} == dict.fromkeys(
        CHECKS, "ok")
    results = {name: c["results"] for name, c in report["checks"].items()}
    assert results["train"]["ratio_b_over_a"] > 0
    # a CPU skips every test that needs a GPU, and runs no other
    assert re.fullmatch(r"\d+ skipped, \d+ deselected in .*", results["gpu_tests"]["summary"])
    assert results["cudnn"]["cudnn_embedding128_fp16_persistent"] == 0.0  # a CPU has none
    assert results["overhead"]["step_overhead_pairs"] >= 1
    assert results["profile"]["profile_ms_per_step"] > 0
    assert results["profile"]["profile_syncs_per_step"] == 0
    assert set(results["tf32"]) == {"tf32=False", "tf32=null", "tf32=True"}  # as Hydra names them
    assert len(results["batch_size"]) == 2 * 3  # two tiny batch sizes x three rates
    assert list(results["persistent"]) == ["trainer.precision=16-mixed model.input=embedding"]
    assert set(results["recipe"]) == {"trainer.precision=32-true",
                                      "trainer.precision=bf16-mixed"}
    assert all(run["best_val_ppl"] > 1 for run in results["batch_size"].values())
    log = (out / LOG_FILE).read_text()
    assert all(f"===== {name}: ok" in log for name in CHECKS)
    assert "Self CPU" in log  # the profile's table
    assert sorted(p.name for p in out.iterdir()) == sorted((JSON_FILE, LOG_FILE))
