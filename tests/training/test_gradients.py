"""GradientMonitor: clipping statistics, and divergence stopped before anything is saved."""

import math
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charrnn.training.gradients import GradientMonitor, TrainingDiverged
from charrnn.training.run import train


def test_clipped_fraction_on_a_constructed_case():
    monitor = GradientMonitor()
    logged = {}
    module = SimpleNamespace(
        hparams=SimpleNamespace(vocab="abcd"), last_grad_norm=None,
        log=lambda name, value, **kw: logged.__setitem__(name, float(value)),
    )
    trainer = SimpleNamespace(gradient_clip_val=5.0, logger=None, global_step=0, current_epoch=0,
                              precision_plugin=None)
    monitor.on_train_epoch_start(trainer, module)
    for norm in (1.0, 7.0, 4.99, 5.0, 12.0):  # 2 of 5 above the threshold (5.0 is not above)
        module.last_grad_norm = torch.tensor(norm)
        monitor.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, None, 0)
    monitor.on_train_epoch_end(trainer, module)
    assert logged["train/clipped_fraction"] == pytest.approx(0.4)


def test_divergence_found_in_a_group_names_its_own_step_and_stops_before_validation():
    monitor = GradientMonitor(check_every_n_steps=10)
    module = SimpleNamespace(hparams=SimpleNamespace(vocab="abcd"), last_grad_norm=None)
    trainer = SimpleNamespace(gradient_clip_val=5.0, logger=None, global_step=0, current_epoch=0,
                              checkpoint_callbacks=[], precision_plugin=None)
    monitor.on_train_epoch_start(trainer, module)
    for step, loss in enumerate([1.0, 1.2, math.nan, 1.1], start=1):
        trainer.global_step = step
        module.last_grad_norm = torch.tensor(1.0)
        monitor.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, 0)
    with pytest.raises(TrainingDiverged, match="diverged at step 3 .*train loss nan"):
        monitor.on_validation_start(trainer, module)


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.gradient_clip_val=null", "module.lr=1000.0",
                   "trainer.val_check_interval=1", "trainer.max_epochs=3")
    with pytest.raises(TrainingDiverged) as err:
        train(cfg)
    message = str(err.value)
    assert "training diverged at step 2 (epoch 1)" in message
    assert "trainer.gradient_clip_val=5.0" in message and "last.ckpt" in message
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1  # saved after step 1, before the step that diverged
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_fp16_steps_the_scaler_skips_are_not_divergence(tiny_cfg, tmp_path, monkeypatch):
    """16-mixed scales the loss; a step whose gradients overflow is skipped by the GradScaler
    (which then lowers the scale). Its infinite gradient norm is no divergence, and the epoch's
    histogram and clipped fraction leave it out. (On a CPU Lightning turns 16-mixed into
    bf16-mixed, so the fp16 plugin is given here directly.)"""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from charrnn.training import trainer

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # the first steps overflow
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    monkeypatch.setattr(trainer, "precision_arguments",
                        lambda precision, accelerator: {"precision": None, "plugins": [plugin]})
    metrics = train(tiny_cfg("trainer.max_epochs=1", "model.kernel=torch"))
    assert scaler.get_scale() < 2.0**24  # steps were skipped
    assert metrics["best_val_ppl"] < 100
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"histograms": 0})
    acc.Reload()
    assert "train/grad_norm_hist" in acc.Tags()["histograms"]
    clipped = acc.Scalars("train/clipped_fraction")[0].value
    assert 0 <= clipped <= 1
