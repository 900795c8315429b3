import math

import pytest
import torch
import torch.nn.functional as F

from charrnn.errors import CharRNNError
from charrnn.model import CharRNN


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_shapes_and_state_carry(cell):
    model = CharRNN(vocab_size=11, hidden_size=8, num_layers=2, cell=cell)
    x = torch.randint(0, 11, (3, 7))
    logits, state = model(x)
    assert logits.shape == (3, 7, 11)
    # Feeding the sequence in two halves, carrying the state, gives the same logits.
    first, state = model(x[:, :4])
    second, _ = model(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits)


def test_default_is_vanilla_tanh_rnn_with_onehot_input():
    model = CharRNN(vocab_size=65)
    assert isinstance(model.rnn, torch.nn.RNN) and model.rnn.nonlinearity == "tanh"
    assert model.rnn.input_size == 65 and model.rnn.hidden_size == 512
    assert model.embedding is None and model.head.out_features == 65


def test_onehot_equals_selecting_columns_of_w_ih():
    model = CharRNN(vocab_size=9, hidden_size=6)
    x = torch.randint(0, 9, (2, 5))
    logits, _ = model(x)
    # Hand-rolled tanh RNN fed by indexing W_ih instead of multiplying a one-hot vector.
    rnn = model.rnn
    h = torch.zeros(2, 6)
    outs = []
    for t in range(5):
        from_input = rnn.weight_ih_l0[:, x[:, t]].T + rnn.bias_ih_l0  # (B, H), no one-hot
        h = torch.tanh(from_input + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0)
        outs.append(model.head(h))
    torch.testing.assert_close(torch.stack(outs, dim=1), logits)


def test_embedding_input():
    model = CharRNN(vocab_size=9, hidden_size=6, input="embedding", embedding_dim=4)
    assert model.rnn.input_size == 4
    assert model(torch.zeros(1, 3, dtype=torch.long))[0].shape == (1, 3, 9)


def test_loss_at_initialisation_is_about_ln_vocab():
    torch.manual_seed(0)
    model = CharRNN(vocab_size=65)
    x = torch.randint(0, 65, (16, 100))
    logits, _ = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 65, (1600,)))
    assert abs(loss.item() - math.log(65)) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cell": "gpt"}, "unknown model.cell 'gpt': allowed values are rnn, lstm, gru"),
        ({"hidden_size": 0}, "model.hidden_size must be a positive integer"),
        ({"input": "bytes"}, "unknown model.input"),
        ({"input": "embedding"}, "model.embedding_dim"),
    ],
)
def test_bad_model_settings(kwargs, message):
    with pytest.raises(CharRNNError, match=message):
        CharRNN(vocab_size=5, **kwargs)
