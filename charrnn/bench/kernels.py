"""--only kernel and --only cudnn: the model's forward + backward alone, kernel against kernel."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from charrnn.bench.measure import BATCH, SEQ_LENGTH, median_time, synchronize
from charrnn.models.registry import CharRNN


def bench_kernel(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Milliseconds per forward + backward of the default model (batch 64 x 100) for each kernel,
    the kernels alternating so that both see the same spells of a shared machine."""
    torch.manual_seed(0)
    batch, length = (4, 10) if args.tiny else (BATCH, SEQ_LENGTH)
    model = CharRNN(65, hidden_size=args.hidden_size)
    x, y = torch.randint(65, (batch, length)), torch.randint(65, (batch, length))
    results: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        times: dict[str, list[float]] = {"torch": [], "fused": []}
        for i in range(2 + 5 * args.repeats):  # the first two rounds warm up
            for kernel, spent in times.items():
                model.kernel = kernel
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits, _ = model(x)
                F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).backward()
                if i >= 2:
                    spent.append(time.perf_counter() - start)
        for kernel, spent in times.items():
            results[f"kernel_{kernel}_{precision}_ms"] = 1000 * statistics.median(spent)
        results[f"kernel_speedup_{precision}"] = (results[f"kernel_torch_{precision}_ms"]
                                                  / results[f"kernel_fused_{precision}_ms"])
    return results | adam_step_ms(model, args.repeats)


def adam_step_ms(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Milliseconds per Adam step over the model's parameters: torch's default implementation
    for them (on a CPU a loop over the tensors) against the fused one (training's on a GPU),
    alternating."""
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizers = {"default": torch.optim.Adam(model.parameters(), lr=1e-3),
                  "fused": torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(2 + 5 * repeats):  # the first two rounds warm up
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            for _ in range(20):
                optimizer.step()
            if i >= 2:
                times[name].append((time.perf_counter() - start) / 20)
    results = {f"adam_{name}_ms": 1000 * statistics.median(t) for name, t in times.items()}
    results["adam_speedup"] = results["adam_default_ms"] / results["adam_fused_ms"]
    return results


# --only cudnn: (name, model.input, autocast dtype). cuDNN picks its persistent RNN kernel only
# for fp16 input, one layer, and an input size and a hidden size that are multiples of 128
# (PyTorch's get_algo in aten/src/ATen/native/cudnn/RNN.cpp); one-hot input has 65, an
# embedding of 128 keeps the input projection outside the recurrence.
CUDNN_CASES = (
    ("onehot_fp32", "onehot", None),
    ("onehot_fp16", "onehot", torch.float16),
    ("embedding128_fp32", "embedding", None),
    ("embedding128_bf16", "embedding", torch.bfloat16),
    ("embedding128_fp16", "embedding", torch.float16),
)


def kernel_names(fn: Callable[[], object], device: str) -> list[str]:
    """The GPU kernels one call of fn runs (on a CPU its operators), costliest first."""
    from torch.profiler import ProfilerActivity, profile

    gpu = torch.device(device).type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]) as prof:
        fn()
        synchronize(device)
    cost = "self_device_time_total" if gpu else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, cost), reverse=True)
    return [e.key for e in events if getattr(e, cost) > 0]


def bench_cudnn(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Milliseconds per forward + backward of nn.RNN (model.kernel=torch: cuDNN on a GPU) at
    batch 64 x 100, one-hot or with an embedding of 128, fp32 or under autocast; `_persistent`
    is 1 when a kernel of the step is one of cuDNN's persistent ones (its name says 'persist').
    Each case's five costliest kernels are printed."""
    torch.manual_seed(0)
    device = args.device
    batch, length = (4, 10) if args.tiny else (BATCH, SEQ_LENGTH)
    x = torch.randint(65, (batch, length), device=device)
    y = torch.randint(65, (batch, length), device=device)
    results: dict[str, float] = {}
    for name, input, dtype in CUDNN_CASES:
        model = CharRNN(65, hidden_size=args.hidden_size, input=input, embedding_dim=128,
                        kernel="torch").to(device)

        def step(model: CharRNN = model, dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                logits, _ = model(x)
            F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).backward()

        results[f"cudnn_{name}_ms"] = 1000 * median_time(step, 5 * args.repeats, warmup=2,
                                                         device=device)
        names = kernel_names(step, device)
        results[f"cudnn_{name}_persistent"] = float(any("persist" in n.lower() for n in names))
        print(f"{name}: {'; '.join(names[:5])}")
    return results
