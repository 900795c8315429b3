"""Weight drop, locked dropout and character (embedding) dropout: each acts in training only."""

import pytest
import torch
import torch.nn.functional as F

from charrnn.errors import CharRNNError
from charrnn.models.registry import build_model
from charrnn.models.regularization import drop_embedding, drop_weights, locked_dropout
from charrnn.training.run import train
from tests.conftest import compose_train

OPTIONS = ("weight_drop", "locked_dropout", "embedding_dropout")
MODELS = {  # every cell, the vanilla RNN with both kernels and both inputs
    "rnn-fused": {"cell": "rnn", "kernel": "fused"},
    "rnn-torch": {"cell": "rnn", "kernel": "torch"},
    "rnn-embedding": {"cell": "rnn", "input": "embedding", "embedding_dim": 6},
    "lstm": {"cell": "lstm"},
    "gru": {"cell": "gru", "num_layers": 2},
    "transformer": {"cell": "transformer", "num_heads": 2},
}


def test_options_are_off_by_default():
    cfg = compose_train([])
    assert all(cfg.model[option] == 0.0 for option in OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_option_acts_in_training_only(name, option):
    if name == "transformer" and option == "weight_drop":
        pytest.skip("no hidden-to-hidden weights (refused: test_transformer.py)")
    settings = {"hidden_size": 8} | MODELS[name]
    torch.manual_seed(0)
    plain = build_model(9, **settings)
    regularized = build_model(9, **settings, **{option: 0.5})
    regularized.load_state_dict(plain.state_dict())
    x = torch.randint(0, 9, (4, 12))
    plain.eval(), regularized.eval()
    torch.testing.assert_close(regularized(x)[0], plain(x)[0])  # eval: no effect at all
    regularized.train()
    plain.train()  # no other dropout in these models: training mode alone changes nothing
    torch.testing.assert_close(plain(x)[0], plain(x)[0])
    first, second = regularized(x)[0], regularized(x)[0]
    assert not torch.allclose(first, plain(x)[0])  # training: it acts ...
    assert not torch.allclose(first, second)  # ... with a new mask every batch
    F.cross_entropy(first.flatten(0, 1), x.flatten()).backward()
    assert all(p.grad is not None for p in regularized.parameters())


def test_locked_dropout_keeps_one_mask_for_the_whole_sequence():
    torch.manual_seed(0)
    out = locked_dropout(torch.ones(3, 50, 7), 0.5, training=True, time_dim=1)
    assert (out == out[:, :1]).all()  # the same units dropped at every step
    assert set(out.unique().tolist()) == {0.0, 2.0}  # dropped or scaled by 1 / (1 - rate)
    assert 0.2 < (out[:, 0] == 0).float().mean() < 0.8


def test_embedding_dropout_drops_whole_characters():
    torch.manual_seed(0)
    weight = torch.randn(40, 5)
    dropped = drop_embedding(weight, 0.5, training=True)
    zero_rows = (dropped == 0).all(dim=1)
    assert 5 < zero_rows.sum() < 35  # whole rows: characters
    torch.testing.assert_close(dropped[~zero_rows], 2 * weight[~zero_rows])
    # One-hot input: a dropped character contributes only the bias to the first layer.
    model = build_model(9, hidden_size=8, kernel="fused", embedding_dropout=0.99).train()
    torch.manual_seed(1)
    x = torch.zeros(1, 1, dtype=torch.long)
    logits, _ = model(x)
    rnn = model.rnn
    h = torch.tanh(rnn.bias_ih_l0 + rnn.bias_hh_l0)  # the character was dropped (p = 0.99)
    torch.testing.assert_close(logits[0, 0], model.head(h))


def test_weight_drop_drops_hidden_to_hidden_entries_only():
    torch.manual_seed(0)
    w = torch.randn(30, 30)
    (dropped,) = drop_weights({"weight_hh_l0": w}, 0.5, training=True).values()
    assert 0.3 < (dropped == 0).float().mean() < 0.7
    assert drop_weights({"weight_hh_l0": w}, 0.5, training=False) == {}
    model = build_model(9, hidden_size=8, cell="lstm", weight_drop=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randint(0, 9, (2, 5)))
    # the parameters themselves are never changed, only the copy a batch uses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("option", OPTIONS)
def test_bad_rates(option):
    with pytest.raises(CharRNNError, match=f"model.{option} must be a number in"):
        build_model(9, **{option: 1.0})


def test_a_regularized_run_trains_end_to_end(tiny_cfg):
    metrics = train(tiny_cfg("model.cell=lstm", "model.weight_drop=0.3",
                             "model.locked_dropout=0.2", "model.embedding_dropout=0.1"))
    assert metrics["epochs_run"] == 2 and metrics["test_ppl"] < 65
