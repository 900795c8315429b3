"""Inside the memory: the features read off a text, the losses, units and the report."""

import json
import math
import random

import numpy as np
import pytest

from charrnn.studies.memory import (
    compare,
    correlations,
    groups,
    hidden_states,
    load_run,
    main,
    saturation,
    text_features,
    untrained_like,
    window_losses,
)
from charrnn.training.run import train

PLAY = "ROMEO:\nHi (there), now.\n\nJULIET:\nYes! \"Go\" OK\n"


def test_features_of_a_hand_made_text():
    f = text_features(PLAY)
    at = {i: c for i, c in enumerate(PLAY)}
    assert f["line_position"][:8].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]  # ROMEO:\n then "H"
    assert "".join(at[i] for i in np.flatnonzero(f["name_line"])) == "ROMEO:JULIET:"
    assert [at[i] for i in np.flatnonzero(f["after_name_colon"])] == ["\n", "\n"]
    assert "".join(at[i] for i in np.flatnonzero(f["in_quotes_or_brackets"])) == "thereGo"
    assert "".join(at[i] for i in np.flatnonzero(f["word_start"])) == "RHtnJYGO"
    assert "".join(at[i] for i in np.flatnonzero(f["upper_run"])) == "ROMEOJULIETOK"
    assert "".join(at[i] for i in np.flatnonzero(f["sentence_end"])) == ".!"


def test_a_line_that_is_not_after_an_empty_one_is_no_name_line():
    text = "HAMLET:\nno\nSaid he:\n\nKING:\n"  # the text's start counts as after one
    f = text_features(text)
    assert "".join(text[i] for i in np.flatnonzero(f["name_line"])) == "HAMLET:KING:"


def test_groups_and_the_gain_they_carry():
    losses, ngram = np.array([1.0, 1.0, 2.0, 1.0]), np.array([2.0, 1.0, 1.0, 3.0])
    masks = groups({"line_position": np.array([0, 3, 12, 50]),
                    **{k: np.array([True, False, False, False]) for k in (
                        "in_quotes_or_brackets", "word_start", "name_line", "after_name_colon")}})
    rows = {r["group"]: r for r in compare(losses, ngram, masks)}
    buckets = [r for name, r in rows.items() if name.startswith("line position")]
    assert sum(r["chars"] for r in buckets) == 4  # the line buckets are a partition
    assert sum(r["share_of_gain"] for r in buckets if r["chars"]) == pytest.approx(1)
    assert rows["line position 0"]["gain_bits"] == pytest.approx(1 / math.log(2))
    assert rows["line position 10-19"]["gain_bits"] < 0  # counting won there


@pytest.fixture(scope="module")
def play_run(tmp_path_factory):
    from tests.conftest import TINY, compose_train

    root = tmp_path_factory.mktemp("play")
    rng = random.Random(1)
    lines = []
    for _ in range(150):
        lines += [rng.choice(["ROMEO:", "JULIET:", "First Citizen:"])]
        lines += [" ".join(rng.choice("to be or not that is the question".split())
                           for _ in range(rng.randint(3, 9))) + rng.choice(".,!?") + "", ""]
    (root / "corpus.txt").write_text("\n".join(lines))
    run = root / "run"
    train(compose_train([f"data.path={root / 'corpus.txt'}", f"run_dir={run}", *TINY,
                         "model.cell=gru", "model.num_layers=2"]))
    return run


def test_the_models_losses_are_the_test_splits_as_training_scores_it(play_run):
    data = load_run(play_run)
    test = data.split.test
    losses = window_losses(data.model, data.split.ids, test[0], test[-1] + 1, data.seq_length)
    metrics = json.loads((play_run / "metrics.json").read_text())
    assert math.exp(losses.mean()) == pytest.approx(metrics["test_ppl"], rel=1e-5)


def test_every_layers_state_is_recorded_and_saturation_counted(play_run):
    data = load_run(play_run)
    states, positions = hidden_states(data.model, data.split.ids[:4_000], chunks=4)
    assert sorted(states) == ["layer 0 h", "layer 1 h"]
    assert all(a.shape == (len(positions), 16) for a in states.values())
    assert 0 <= saturation(states) <= 1
    saturated = {"layer 0 h": np.array([[1.0, 0.1], [0.995, -0.999]])}
    assert saturation(saturated) == 0.75


@pytest.mark.slow
def test_a_model_that_must_count_to_find_newlines_grows_a_line_position_unit(tmp_path):
    """Lines of exactly 10 random letters: only the position in the line predicts the
    newline. A trained RNN has a unit that follows it far more closely than any unit of the
    same network untrained."""
    from tests.conftest import compose_train

    rng = random.Random(0)
    text = "".join("".join(rng.choice("abcdefgh") for _ in range(10)) + "\n"
                   for _ in range(3000))
    (tmp_path / "lines.txt").write_text(text)
    train(compose_train([f"data.path={tmp_path / 'lines.txt'}", f"run_dir={tmp_path / 'run'}",
                         "model.hidden_size=32", "data.seq_length=50", "data.batch_size=32",
                         "trainer.max_epochs=3", "trainer.enable_model_summary=false",
                         "test=false", "vanishing.every_n_steps=0", "module.lr=0.005"]))
    data = load_run(tmp_path / "run")
    ids = data.split.ids[:8_000]
    line = {"line_position": text_features(text[:8_000])["line_position"]}
    trained, positions = hidden_states(data.model, ids, chunks=8)
    untrained, _ = hidden_states(untrained_like(data), ids, chunks=8)
    r = correlations(trained, {k: v[positions] for k, v in line.items()})["line_position"]["r"]
    r0 = correlations(untrained, {k: v[positions] for k, v in line.items()})["line_position"]["r"]
    assert abs(r) > 0.7 and abs(r) > 2 * abs(r0)


@pytest.mark.slow
def test_the_report_writes_memory_json_and_its_pictures(play_run, tmp_path, capsys):
    (result,) = main([str(play_run), "--pictures", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Kneser-Ney order" in out and "line position 0" in out and "saturated" in out
    saved = json.loads((play_run / "memory.json").read_text())
    assert saved["units"]["line_position"]["kind"] == "h" and "_arrays" not in saved
    assert saved["units"]["in_quotes_or_brackets"] is None  # none in this corpus
    assert (tmp_path / "vs_counting.png").stat().st_size > 10_000
    assert (tmp_path / "line_unit.png").stat().st_size > 10_000
