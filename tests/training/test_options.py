"""Recipe improvements, all off by default: each does what it says."""

import pytest
import torch
import torch.nn.functional as F

from charrnn.models.registry import CharRNN
from charrnn.studies.report import read_scalars
from charrnn.training.module import CharRNNModule
from charrnn.training.run import train
from tests.conftest import compose_train


def test_options_are_off_by_default():
    cfg = compose_train([])
    assert cfg.model.dropout == 0.0 and cfg.module.lr_schedule is None
    assert cfg.data.random_offset is False and cfg.module.carry_state is False
    assert cfg.data.contiguous_batches is False


def test_dropout_is_active_in_training_only():
    model = CharRNN(7, hidden_size=32, dropout=0.5)
    x = torch.randint(0, 7, (2, 5))
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


def test_plateau_schedule_lowers_the_learning_rate(tiny_cfg, tmp_path):
    # A learning rate too small to move val/loss by ReduceLROnPlateau's threshold (1e-4,
    # relative): with patience 0 the rate is halved after every epoch but the first.
    train(tiny_cfg("module.lr=1e-6", "module.lr_schedule=plateau", "module.lr_patience=0",
                   "trainer.max_epochs=4", "early_stopping.patience=10"))
    lrs = [v for _, v in read_scalars(tmp_path / "run")["train/lr"]]  # at each epoch's end
    assert lrs == pytest.approx([1e-6, 1e-6, 5e-7, 2.5e-7])


def test_carried_state_continues_the_previous_batch():
    torch.manual_seed(0)
    module = CharRNNModule(vocab="abcde", model={"hidden_size": 8}, carry_state=True)
    module.log = lambda *a, **k: None
    stream = torch.randint(0, 5, (2, 21))  # two rows, each a contiguous stream
    first = (stream[:, :10], stream[:, 1:11])
    second = (stream[:, 10:20], stream[:, 11:21])
    module.on_train_epoch_start()
    module.training_step(first, 0)
    loss = module.training_step(second, 1)
    # The same second half, run after the first in one sequence:
    logits, _ = module.model(stream[:, :20])
    expected = F.cross_entropy(logits[:, 10:].flatten(0, 1), stream[:, 11:21].flatten())
    torch.testing.assert_close(loss, expected)
    assert not module._state.requires_grad  # detached: backprop stops at the batch boundary
    module.on_train_epoch_start()
    assert module._state is None  # reset when an epoch starts


def test_carry_state_run_end_to_end(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("module.carry_state=true", "data.random_offset=true",
                             "data.batch_size=4"))
    assert metrics["test_ppl"] < 65 and metrics["epochs_run"] == 2
    # Validation is evaluated the same way: as contiguous streams with the state carried.
    cfg = tiny_cfg("module.carry_state=true")
    assert cfg.data.contiguous_batches is True
