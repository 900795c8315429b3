"""What the characters became: learned input vectors compared, against an untrained model."""

import random

import numpy as np
import pytest

from charrnn.studies.characters import (
    case_pairs,
    char_class,
    class_separation,
    cosine,
    main,
    nearest,
)
from tests.conftest import TINY, compose_train


def test_class_separation_finds_classes_that_are_there_and_not_ones_that_are_not():
    rng = np.random.default_rng(0)
    chars = "aeiouAEIOUbcdfgBCDFG0123,.;:! \n"
    centres = {cls: rng.normal(size=16) for cls in ("vowel", "consonant", "digit",
                                                    "punctuation", "whitespace")}
    grouped = np.stack([centres[char_class(c)] + 0.3 * rng.normal(size=16) for c in chars])
    found = class_separation(cosine(grouped), chars, rng, shuffles=300)
    assert found["separation"] > 0.5 and found["z"] > 5 and found["p"] < 0.01
    scattered = rng.normal(size=(len(chars), 16))
    found = class_separation(cosine(scattered), chars, rng, shuffles=300)
    assert abs(found["z"]) < 3 and found["p"] > 0.01
    assert [char_class(c) for c in "aZ7; \n"] == ["vowel", "consonant", "digit",
                                                 "punctuation", "whitespace", "whitespace"]


def test_case_pairs_and_nearest_on_hand_made_vectors():
    chars = "RrSsTt"
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1],
                        [0, 0.1, 0.9]])
    similarity = cosine(vectors)
    assert nearest(similarity, chars, k=1)["R"][0][0] == "r"
    case = case_pairs(similarity, chars, np.random.default_rng(0))
    assert case["pairs"] == 3 and case["difference"] > 0.5


def interchangeable_corpus(path, n_words=3000):
    """Words in which every x could as well be y: x and y appear in the same places."""
    rng = random.Random(0)
    words = "axa oxo exe uxu abo ode".split()
    text = []
    for _ in range(n_words):
        word = rng.choice(words)
        text.append(word.replace("x", rng.choice("xy")))
    path.write_text(" ".join(text) + "\n")
    return path


def test_interchangeable_symbols_end_up_nearest_each_other_after_training(tmp_path):
    from charrnn.training.run import train

    corpus = interchangeable_corpus(tmp_path / "xy.txt")
    run = tmp_path / "run"
    train(compose_train([f"data.path={corpus}", f"run_dir={run}", *TINY,
                         "trainer.max_epochs=6", "model.hidden_size=32"]))
    (result,) = main([str(run), "--pictures", str(tmp_path / "pics"),
                      "--json", str(tmp_path / "c.json")])
    assert result["trained"]["nearest"]["x"][0][0] == "y"
    assert result["trained"]["nearest"]["y"][0][0] == "x"
    untrained = result["untrained"]["nearest"]
    assert not (untrained["x"][0][0] == "y" and untrained["y"][0][0] == "x")
    assert (tmp_path / "pics" / "characters_run.png").stat().st_size > 10_000
    assert len(result["trained"]["points"]) == len(set(corpus.read_text()))


def test_a_folder_that_is_not_a_run_exits_2(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 2
