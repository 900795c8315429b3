"""The speaker-name analysis: which characters are names, and a run scored by group."""

import math
import random

import torch

from charrnn.studies.speakers import GROUPS, analyse, character_groups, speakers
from charrnn.training.run import train
from tests.conftest import compose_train


def play(names: list[str], speeches: int, seed: int) -> str:
    rng = random.Random(seed)
    words = "to be or not that is the question whether tis nobler".split()
    return "".join(f"{rng.choice(names)}:\n{' '.join(rng.choice(words) for _ in range(12))}\n\n"
                   for _ in range(speeches))


def test_name_lines_are_found_and_grouped():
    text = "ALICE:\nhello there\n\nFirst Citizen:\nnot: a name\n\nBOB:\nbye\n"
    assert speakers(text) == {"ALICE", "First Citizen", "BOB"}
    groups = character_groups(text, known={"ALICE", "First Citizen"}, window=100)
    assert groups[: len("ALICE:")].tolist() == [0] * 6
    start = text.index("BOB")
    assert groups[start : start + 4].tolist() == [2] * 4  # "BOB:" unseen, not read before
    assert (groups[text.index("hello") : text.index("\n\nFirst")] == 3).all()
    assert groups[text.index("not: a")] == 3  # a colon inside a speech is not a name line
    again = text + "\nCAROL:\nhi\n\nBOB:\nagain\n"
    groups = character_groups(again, known=set(), window=100)
    assert groups[again.rindex("BOB")] == 1  # BOB's line 20 characters before: copyable
    assert groups[again.rindex("BOB")] != character_groups(again, set(), window=10)[
        again.rindex("BOB")]


def test_a_run_scored_by_group(tmp_path):
    corpus = tmp_path / "play.txt"
    corpus.write_text(play(["ALICE", "BOB"], 120, 0) + play(["CAROL", "DAVE"], 18, 1))
    train_cfg = compose_train([
        f"data.path={corpus}", f"run_dir={tmp_path / 'run'}", "model.hidden_size=16",
        "data.seq_length=16", "data.batch_size=8", "trainer.max_epochs=1",
        "trainer.enable_model_summary=false"])
    train(train_cfg)
    result = analyse(tmp_path / "run", "test")
    # The test split (the last 10%) is all CAROL and DAVE: names the training split never has.
    assert result["speeches"]["seen"] == 0 and result["speeches"]["unseen"] > 5
    assert GROUPS[0] not in result
    assert result[GROUPS[1]]["characters"] + result[GROUPS[2]]["characters"] > 20
    total = sum(result[g]["characters"] for g in GROUPS if g in result)
    assert total == result["all"]["characters"]
    assert math.isclose(sum(result[g]["share_of_loss"] for g in GROUPS if g in result), 1.0,
                        rel_tol=1e-6)
    assert torch.isfinite(torch.tensor(result["all"]["ppl"]))
