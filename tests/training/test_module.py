import math

import torch

from charrnn.data.windows import IGNORE_INDEX
from charrnn.training.module import CharRNNModule


class FixedLogits(torch.nn.Module):
    """Stands in for CharRNN: returns the logits stored for each batch, in order."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.logits = list(logits)

    def forward(self, x, state=None):
        return self.logits.pop(0), None


def test_perplexity_is_exp_of_token_weighted_mean_loss():
    module = CharRNNModule(vocab="ab", model={"hidden_size": 4})
    # Batch 1: 4 targets, each given probability 1/2. Batch 2: 1 target (the rest is padding)
    # given probability 1/4.
    p_big = torch.log(torch.tensor([0.5, 0.5]))
    p_small = torch.log(torch.tensor([0.25, 0.75]))
    logits1 = p_big.expand(1, 4, 2).clone()
    logits2 = p_small.expand(1, 4, 2).clone()
    y1 = torch.zeros(1, 4, dtype=torch.long)
    y2 = torch.tensor([[0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])  # one real target
    module.model = FixedLogits([logits1, logits2])
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module.validation_step((torch.zeros(1, 4, dtype=torch.long), y1), 0)
    module.validation_step((torch.zeros(1, 4, dtype=torch.long), y2), 1)
    module.on_validation_epoch_end()
    # 4 targets at -ln(0.5) and 1 target at -ln(0.25): mean = (4 ln2 + 2 ln2) / 5 = 1.2 ln 2.
    expected_loss = 1.2 * math.log(2)
    assert math.isclose(logged["val/loss"], expected_loss, rel_tol=1e-6)
    assert math.isclose(logged["val/ppl"], 2**1.2, rel_tol=1e-6)
    # The mean of per-batch perplexities (2 and 4) would be 3: a different number.
    assert not math.isclose(logged["val/ppl"], 3.0, rel_tol=1e-3)


def test_grad_norm_is_logged_before_clipping():
    torch.manual_seed(0)
    module = CharRNNModule(vocab="abc", model={"hidden_size": 8})
    x = torch.randint(0, 3, (2, 5))
    logits, _ = module.model(x)
    (logits.sum() * 1000).backward()
    expected = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in module.parameters()])
    ).item()
    module.configure_gradient_clipping(None, gradient_clip_val=5.0, gradient_clip_algorithm="norm")
    assert math.isclose(float(module.last_grad_norm), expected, rel_tol=1e-5)
    assert expected > 5.0
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert math.isclose(clipped.item(), 5.0, rel_tol=1e-4)


def test_hparams_are_plain_containers():
    module = CharRNNModule(vocab="ab\n", model={"hidden_size": 4, "cell": "gru"}, lr=0.01)
    assert dict(module.hparams) == {
        "vocab": "ab\n", "model": {"hidden_size": 4, "cell": "gru"}, "lr": 0.01,
        "lr_schedule": None, "lr_factor": 0.5, "lr_patience": 1, "carry_state": False,
    }


def test_adam_is_fused_on_a_gpu_and_torch_s_default_on_a_cpu():
    module = CharRNNModule(vocab="abc", model={"hidden_size": 8})
    assert not module.configure_optimizers().param_groups[0]["fused"]
    module._device = torch.device("cuda", 0)  # where configure_optimizers finds the model
    assert module.configure_optimizers().param_groups[0]["fused"]
