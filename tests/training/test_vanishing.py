import math

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charrnn.models.registry import CharRNN, build_model
from charrnn.training.run import train
from charrnn.training.vanishing import hidden_state_gradients, input_gradients


def test_gradient_distance_agrees_with_a_hand_unrolled_rnn():
    torch.manual_seed(0)
    model = CharRNN(5, hidden_size=4)
    x, y = torch.randint(0, 5, (3, 6)), torch.randint(0, 5, (3, 6))
    curve = hidden_state_gradients(model, x, y)

    rnn = model.rnn
    h, hs = torch.zeros(3, 4), []
    for t in range(6):
        onehot = F.one_hot(x[:, t], 5).float()
        h = torch.tanh(onehot @ rnn.weight_ih_l0.T + rnn.bias_ih_l0
                       + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0)
        hs.append(h)
    loss = F.cross_entropy(model.head(h), y[:, -1], reduction="sum")
    grads = torch.autograd.grad(loss, hs)
    expected = torch.stack([g.norm(dim=1).mean() for g in reversed(grads)])
    torch.testing.assert_close(curve, expected)
    assert all(p.grad is None for p in model.parameters())  # the model is left untouched


@pytest.mark.parametrize("kernel", ["torch", "fused"])
def test_input_gradient_distance_agrees_with_autograd_on_one_hot_vectors(kernel):
    torch.manual_seed(0)
    model = CharRNN(5, hidden_size=4, kernel=kernel)
    x, y = torch.randint(0, 5, (3, 6)), torch.randint(0, 5, (3, 6))
    curve = input_gradients(model, x, y)

    onehot = F.one_hot(x, 5).float().requires_grad_(True)
    out, _ = model.rnn(onehot)
    loss = F.cross_entropy(model.head(out[:, -1]), y[:, -1], reduction="sum")
    (grad,) = torch.autograd.grad(loss, onehot)
    torch.testing.assert_close(curve, grad.norm(dim=2).mean(dim=0).flip(0))
    assert all(p.grad is None for p in model.parameters())


def test_input_gradient_distance_of_a_transformer_ends_at_its_context():
    """One block attends to the last context_length characters: nothing before reaches L_T."""
    torch.manual_seed(0)
    model = build_model(7, cell="transformer", hidden_size=8, num_layers=1, num_heads=2,
                        context_length=5)
    curve = input_gradients(model, torch.randint(0, 7, (4, 12)), torch.randint(0, 7, (4, 12)))
    assert curve.shape == (12,) and (curve[:5] > 0).all() and (curve[5:] == 0).all()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradient_distance_runs_for_gated_cells(cell):
    model = CharRNN(5, hidden_size=4, num_layers=2, cell=cell)
    curve = hidden_state_gradients(model, torch.randint(0, 5, (2, 7)), torch.randint(0, 5, (2, 7)))
    assert curve.shape == (7,) and torch.isfinite(curve).all() and curve[0] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_gradient_distance_on_a_gpu_matches_the_cpu(cell):
    # cuDNN refuses backward through an RNN in eval mode: this crashed training on a GPU.
    torch.manual_seed(0)
    model = CharRNN(7, hidden_size=16, cell=cell)
    x, y = torch.randint(0, 7, (3, 12)), torch.randint(0, 7, (3, 12))
    for measure in (hidden_state_gradients, input_gradients):
        on_cpu = measure(model.cpu(), x, y)
        on_gpu = measure(model.cuda(), x.cuda(), y.cuda()).cpu()
        torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-7)


def test_diagnostics_reach_tensorboard(tiny_cfg, tmp_path):
    train(tiny_cfg("vanishing.every_n_steps=5", "vanishing.image_every_n_steps=8"))
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for name in ("input", "hidden"):
        assert {f"grad_distance_{name}/k=1", f"grad_distance_{name}/k=10"} <= set(tags["scalars"])
        assert f"grad_distance_{name}/k=25" not in tags["scalars"]  # seq_length 16: no such k
        k1 = acc.Scalars(f"grad_distance_{name}/k=1")
        assert [e.step for e in k1] == [5, 10, 15, 20, 25, 30, 35]  # every 5 steps, once each
        assert all(math.isfinite(e.value) and e.value > 0 for e in k1)
    # The image at the first measurement, then at the first one at least 8 steps later.
    assert [e.step for e in acc.Images("grad_distance/curve")] == [5, 15, 25, 35]
    assert "train/clipped_fraction" in tags["scalars"]
    assert "train/grad_norm_hist" in tags["histograms"]
