"""The bf16 fast path and the benchmark harness."""

import json
import math

import pytest
import torch

from charrnn import host
from charrnn.bench import main as bench
from charrnn.errors import CharRNNError
from charrnn.models.rnn import CharRNN
from charrnn.studies.report import read_scalars
from charrnn.training.precision import resolve_precision
from charrnn.training.run import train

# bf16 training needs oneDNN's bf16 kernels (x86 with AVX-512 or newer); elsewhere, as under
# .ci/cpu avx2, it is refused (test_bf16_on_a_cpu_without_it_is_refused_before_the_run).
needs_cpu_bf16 = pytest.mark.skipif(not host.onednn_has_bf16(),
                                    reason="bf16 training is refused on this CPU (no AVX-512)")


@needs_cpu_bf16
def test_bf16_loss_stays_close_to_fp32(tiny_cfg, tmp_path):
    """Tolerance: every one of the first training steps' losses within 2% of fp32's. bf16 keeps
    8 bits of mantissa (~0.4% per rounding); the matmuls run in bf16 while the loss, softmax and
    optimizer stay fp32 under autocast, and a few steps compound only a little of that."""
    train(tiny_cfg("trainer.max_epochs=1", run="fp32"))
    train(tiny_cfg("trainer.max_epochs=1", "trainer.precision=bf16-mixed", run="bf16"))
    fp32 = [v for _, v in read_scalars(tmp_path / "fp32")["train/loss"]]
    bf16 = [v for _, v in read_scalars(tmp_path / "bf16")["train/loss"]]
    assert len(fp32) == len(bf16) >= 10
    assert bf16 == pytest.approx(fp32, rel=0.02)
    assert bf16 != fp32  # it really ran in bf16


@needs_cpu_bf16
@pytest.mark.parametrize("cell", ["lstm", "gru", "transformer"])  # rnn: the test above
def test_every_cell_trains_in_bf16(tiny_cfg, cell):
    metrics = train(tiny_cfg(f"model.cell={cell}", "trainer.precision=bf16-mixed",
                             "trainer.max_epochs=1", "model.num_heads=2"))
    assert math.isfinite(metrics["test_ppl"]) and metrics["test_ppl"] > 1


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_bf16_on_a_cpu_without_it_is_refused_before_the_run(tiny_cfg, tmp_path, monkeypatch,
                                                             precision):
    """On a CPU whose oneDNN has no bf16 kernels (no AVX-512) bf16 is emulated, 3 to 16 times
    slower than fp32, and has no LSTM at all: the run stops before it starts, naming what the
    CPU lacks and the setting that works (auto resolves to 32-true there: test_auto_precision).
    """
    monkeypatch.setattr(host, "onednn_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CharRNNError, match=rf"trainer.precision={precision}.* needs bf16 "
                       r"instructions, and this CPU has none that PyTorch can use: oneDNN, .* "
                       r"needs AVX-512, and torch finds \w+ here\. .* Use "
                       r"trainer.precision=32-true \(the default\) or auto"):
        train(tiny_cfg(f"trainer.precision={precision}", "model.cell=lstm"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "gpu", "accelerator", "expected"), [
    ("fpu avx512f amx_bf16 amx_tile", False, "auto", "bf16-mixed"),  # a CPU with AMX
    ("fpu avx512f avx512_bf16", False, "auto", "bf16-mixed"),  # AVX-512 BF16, no AMX
    ("fpu avx2 avx512f", False, "auto", "32-true"),  # no bf16 instructions
    ("fpu avx512f amx_bf16", True, "auto", "32-true"),  # a GPU: fp32
    ("fpu avx512f amx_bf16", True, "gpu", "32-true"),
    ("fpu avx512f amx_bf16", True, "cpu", "bf16-mixed"),  # GPU present, CPU chosen: the CPU's
    ("fpu avx512f amx_bf16 onednn-avx2", False, "auto", "32-true"),  # ONEDNN_MAX_CPU_ISA=AVX2
    (None, False, "auto", "32-true"),  # no /proc/cpuinfo (macOS, Windows)
])
def test_auto_precision(monkeypatch, tmp_path, flags, gpu, accelerator, expected):
    import charrnn.training.precision as precision

    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(host, "CPUINFO", cpuinfo)
    # oneDNN's own answer, made to follow the test's CPU rather than this machine's
    monkeypatch.setattr(host, "onednn_has_bf16", lambda: "onednn-avx2" not in flags)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: gpu)
    assert resolve_precision("auto", accelerator) == expected
    assert resolve_precision("32-true", accelerator) == "32-true"  # only auto is resolved
    assert resolve_precision("bf16-mixed", accelerator) == "bf16-mixed"
    plugins = precision.precision_arguments("auto", accelerator).get("plugins", [])
    assert [p.device for p in plugins] == (["cpu"] if expected == "bf16-mixed" else [])


@pytest.fixture
def torch_tf32_defaults():
    """Restores torch's TF32 switches (process-wide) after the test."""
    yield
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.usefixtures("torch_tf32_defaults")
def test_tf32_sets_both_libraries_and_null_restores_torch_defaults(tiny_cfg, tmp_path):
    """Each run sets the switches, so a sweep's job never inherits the job before it."""
    train(tiny_cfg("trainer.max_epochs=1", "tf32=false", "test=false", run="off"))
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == (
        "highest", False)
    assert "tf32: false" in (tmp_path / "off" / "config.yaml").read_text()
    train(tiny_cfg("trainer.max_epochs=1", "tf32=true", "test=false", run="on"))
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == (
        "high", True)
    train(tiny_cfg("trainer.max_epochs=1", "test=false", run="default"))
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == (
        "highest", True)
    # cudnn.flags (the gradient-distance diagnostic) can still read the switches; where torch
    # has per-operator switches (newer than 2.6, where the two set here were all there was),
    # they agree and the CPU's library is left alone
    with torch.backends.cudnn.flags(enabled=False):
        pass
    if hasattr(torch.backends.cudnn, "rnn"):
        assert torch.backends.cudnn.rnn.fp32_precision == "tf32"
        assert torch.backends.mkldnn.matmul.fp32_precision == "none"


@pytest.mark.usefixtures("torch_tf32_defaults")
def test_tf32_refuses_other_values_before_writing_anything(tiny_cfg, tmp_path):
    with pytest.raises(CharRNNError, match=r"tf32 must be true, false or null .* got 'yes'"):
        train(tiny_cfg("tf32=yes"))
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("torch_tf32_defaults")
def test_the_model_line_says_where_tf32_is_on():
    from charrnn.training.precision import set_tf32, tf32_note

    notes = []
    for tf32 in (None, True, False):
        set_tf32(tf32)
        notes.append(tf32_note())
    assert notes == ["TF32 in cuDNN, tf32=null", "TF32 in cuBLAS and cuDNN, tf32=true",
                     "no TF32, tf32=false"]


@pytest.mark.usefixtures("torch_tf32_defaults")
def test_lightnings_tensor_core_advice_names_the_tf32_key(caplog):
    """On an Ampere-or-later GPU Lightning advises torch.set_float32_matmul_precision at every
    start, an API no key of this project reaches: the advice names tf32=true instead, and is
    left out after tf32=false. (Lightning's own check returns early without a GPU: its message
    is sent here as Lightning sends it.)"""
    import logging

    from lightning.fabric.utilities.rank_zero import rank_zero_info

    from charrnn.training.precision import set_tf32

    advice = ("You are using a CUDA device ('NVIDIA H200') that has Tensor Cores. To properly "
              "utilize them, you should set `torch.set_float32_matmul_precision('medium' | "
              "'high')` which will trade-off precision for performance.")
    name = "lightning.pytorch.utilities.rank_zero"
    with caplog.at_level(logging.INFO, logger=name):
        for tf32 in (None, False):
            set_tf32(tf32)
            rank_zero_info(advice)
    messages = [r.getMessage() for r in caplog.records if r.name == name]
    assert messages == ["this GPU has Tensor Cores: tf32=true runs fp32 matrix products in "
                        "TensorFloat-32, faster and a little less precise (docs/performance.md, "
                        "TF32)."]


@pytest.mark.slow
def test_benchmark_harness_end_to_end_tiny(tmp_path):
    results = bench(["--tiny", "--only", "train", "--only", "kernel", "--only", "overhead",
                     "--json", str(tmp_path / "bench.json")])
    assert results["ratio_b_over_a"] > 0
    # without bf16 kernels (no AVX-512) bf16 training is not measured: train.py refuses it
    assert results["ratio_c_over_a"] > 0 if host.onednn_has_bf16() else math.isnan(
        results["ratio_c_over_a"])
    assert results["ratio_bt_over_a_overhead"] > 0 and results["kernel_speedup_bf16"] > 0
    assert results["adam_fused_ms"] > 0 and results["adam_speedup"] > 0
    assert results["val_chars_per_s_fp32"] > 0 and results["peak_rss_mb_lightning_fp32"] > 0
    assert results["overhead_lightning_bare_ms_per_step"] > 0
    assert results["step_overhead_ms"] == pytest.approx(
        results["step_overhead_lightning_loop_ms"] + results["step_overhead_project_ms"])
    assert results["step_overhead_pairs"] == 1  # --tiny: one round of one measured epoch
    assert (results["step_overhead_ms_min"] <= results["step_overhead_ms_q1"]
            <= results["step_overhead_ms"] <= results["step_overhead_ms_q3"]
            <= results["step_overhead_ms_max"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["results"] == results and "torch" in report["machine"]


@pytest.mark.slow
def test_benchmark_overrides_reach_the_training_runs(tmp_path):
    with pytest.raises(RuntimeError, match="(?s)lightning_bare failed.*vanishing.every_n_stepz"):
        bench(["--tiny", "--only", "overhead", "--set", "vanishing.every_n_stepz=0",
               "--json", str(tmp_path / "bench.json")])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bf16_autocast_runs_cudnn_recurrences_in_fp32(device, cell):
    """Autocast would give cuDNN's RNNs fp16 (no loss scaler under bf16-mixed): on a GPU the
    recurrence runs in fp32 under bf16 autocast, in fp16 under fp16 autocast (16-mixed, with
    its scaler); a CPU runs it in bf16 where oneDNN has bf16 kernels, in fp32 elsewhere."""
    model = CharRNN(65, hidden_size=128, cell=cell, kernel="torch").to(device)
    x = torch.randint(65, (8, 12), device=device)
    cpu_state = torch.bfloat16 if host.onednn_has_bf16() else torch.float32
    expected = {"cpu": {torch.bfloat16: cpu_state},
                "cuda": {torch.bfloat16: torch.float32, torch.float16: torch.float16}}[device]
    for dtype, state_dtype in expected.items():
        with torch.autocast(device, dtype=dtype):
            logits, state = model(x)
        h = state[0] if isinstance(state, tuple) else state
        assert (h.dtype, logits.dtype) == (state_dtype, dtype)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_without_onednn_bf16_the_recurrence_runs_in_fp32_under_autocast(monkeypatch, cell):
    """On a CPU without AVX-512 (most laptops and cloud VMs) oneDNN has no bf16 LSTM at all:
    bf16-mixed runs every recurrence there in fp32, the head still in bf16. Looked like such a
    CPU from any CPU; .ci/run also runs the suite with oneDNN really limited to AVX2."""
    monkeypatch.setattr(host, "onednn_has_bf16", lambda: False)
    model = CharRNN(65, hidden_size=32, cell=cell, kernel="torch")
    x = torch.randint(65, (4, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(x)
        _, state = model(x, state)  # a state carried over from the last batch
    for part in state if isinstance(state, tuple) else (state,):
        assert part.dtype == torch.float32
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.rnn.parameters())
