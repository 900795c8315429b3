"""python -m charrnn.studies.diagnostics: trained runs compared in one picture."""

import pytest

from charrnn.studies.diagnostics import main
from charrnn.training.run import train


def test_runs_are_compared_in_a_png(tiny_cfg, tmp_path, capsys):
    train(tiny_cfg("vanishing.every_n_steps=0", "test=false"))
    out = tmp_path / "gradients.png"
    for extra in ([], ["--hidden"]):
        main([str(tmp_path / "run"), "--out", str(out), *extra])
        assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
    assert "rnn (" in capsys.readouterr().out  # the table: cell, parameters, steps


def test_comparing_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "out.png")])
    assert exit_.value.code == 2
    assert "missing is not a run folder (no config.yaml in it)" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
