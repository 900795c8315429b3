"""--only export: characters/s of the exported page's `generate` in headless Chromium, beside
generate.py's one stream for the same model, and the size of each exported file."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import torch

from charrnn.bench.generation import write_random_checkpoint
from charrnn.bench.measure import median_time
from charrnn.errors import CharRNNError
from charrnn.export.run import export_run
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import sample_text

# Chromium as root needs --no-sandbox; the rest keeps it from reaching for Google's servers
# (the page needs no network) and from a GPU it may not have. The browser tests use them too.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def chromium() -> str | None:
    """Debian's Chromium (apt-get install chromium), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page_chars_per_s(path: Path, length: int, repeats: int) -> float:
    """The median over `repeats` (after one warm-up) of `window.charrnn.generate` at T = 1,
    timed inside the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_context(offline=True).new_page()
        page.goto(path.as_uri())
        rates = page.evaluate("""async ([length, repeats]) => {
            const rates = [];
            for (let i = 0; i <= repeats; i++) {
              const start = performance.now();
              await window.charrnn.generate({prompt: "A", temperature: 1, length, seed: i});
              rates.push(length / ((performance.now() - start) / 1000));
            }
            return rates.slice(1);
        }""", [length, repeats])
        browser.close()
    return statistics.median(rates)


def onnx_logit_difference(path: Path, model, steps: int = 500) -> float:
    """The largest |logit| difference between onnxruntime and torch over `steps` characters
    read one at a time (batch 1), the state fed back."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()][1:]
    chars = torch.randint(model.vocab_size, (1, steps), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(chars)[0][0].numpy()
    state = {n: np.zeros((model.rnn.num_layers, 1, model.rnn.hidden_size), np.float32)
             for n in names}
    worst = 0.0
    for t in range(steps):
        logits, *out = session.run(None, {"chars": chars[:, t : t + 1].numpy(), **state})
        state = dict(zip(names, out))
        worst = max(worst, float(np.abs(logits[0, 0] - expected[t]).max()))
    return worst


def bench_export(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    vocab = "".join(chr(c) for c in range(32, 32 + 65))  # 65 characters, like Tiny Shakespeare
    results: dict[str, float] = {}
    for cell in ("rnn", "gru", "lstm"):
        ckpt = write_random_checkpoint(tmp / f"export-{cell}.ckpt", vocab, args.hidden_size,
                                       cell=cell)
        page = export_run(ckpt, "html", tmp / f"{cell}.html")
        results[f"export_{cell}_html_mb"] = page.stat().st_size / 1e6
        model, vocab_ = load_model(ckpt)
        try:  # onnx and onnxruntime are extras
            onnx_path = export_run(ckpt, "onnx", tmp / f"{cell}.onnx")
            results[f"export_{cell}_onnx_mb"] = onnx_path.stat().st_size / 1e6
            results[f"export_{cell}_onnx_max_logit_diff"] = onnx_logit_difference(onnx_path,
                                                                                  model)
        except (ImportError, CharRNNError) as err:
            print(f"export: no ONNX figures ({err})")
        seconds = median_time(lambda model=model, vocab_=vocab_: sample_text(
            model, vocab_, "A", args.gen_length, 1.0,
            generator=torch.Generator().manual_seed(0)), args.repeats)
        results[f"export_{cell}_generate_py_chars_per_s"] = args.gen_length / seconds
        if chromium() is not None:
            results[f"export_{cell}_browser_chars_per_s"] = page_chars_per_s(
                page, args.gen_length, args.repeats)
        else:
            print("export: Chromium is not installed (apt-get install chromium): no page figures")
    return results
