"""The benchmark's command line (its measurements run in the slow tests of each group)."""

import pytest

from charrnn.bench import main


@pytest.mark.parametrize("flag", ["--rounds", "--repeats", "--train-steps", "--hidden-size",
                                  "--gen-length"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_counts_must_be_positive_integers(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--only", "overhead", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be a positive integer, got '{value}'" in capsys.readouterr().err
