"""Generate text from a checkpoint: `python generate.py ckpt_path=<run folder or .ckpt>`."""

import json
import math
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from charrnn.cli import ENTRY_POINTS, fail, multirun, newest_run, prepare_overrides
from charrnn.data.vocab import CharVocab, read_text
from charrnn.errors import CharRNNError, check_int, os_error_reason, unwritable_reason
from charrnn.export.run import check_format, export_run
from charrnn.generation.dynamic import check_dynamic_args
from charrnn.generation.loading import check_device, load_model
from charrnn.generation.sampling import sample_metrics, sample_text, score_text
from charrnn.models.registry import CharModel
from charrnn.studies.mixture import (
    MixedNext,
    as_metrics,
    check_mix,
    describe,
    mixed_scores,
    prepare_mixture,
    which,
)
from charrnn.training.run_folder import (
    METRICS_FILE,
    register_resolvers,
    resolve_checkpoint,
    run_folder_of,
)

register_resolvers()

MODES = ("sample", "score", "serve", "export")


def generate(cfg: DictConfig, stream=sys.stdout) -> list[str] | dict:
    """Sample (or score) as configured; returns the samples (or the score)."""
    if cfg.ckpt_path is None:
        newest = newest_run(Path(to_absolute_path("outputs")))
        if newest is None:
            raise CharRNNError(
                "no checkpoint given, and no run folder under outputs/ has a best checkpoint: "
                "set ckpt_path to a run folder or a .ckpt file, e.g. "
                "`python generate.py ckpt_path=outputs/2026-01-01/12-00-00`."
            )
        print(f"ckpt_path not given: using the newest run, {newest}", file=sys.stderr)
        cfg.ckpt_path = str(newest)
    if cfg.mode not in MODES:
        raise CharRNNError(f"mode must be {', '.join(MODES[:-1])} or {MODES[-1]}, got "
                           f"{cfg.mode!r} (conf/generate/generate.yaml).")
    if cfg.mode == "export":
        check_format(cfg.format)
    check_int("seed", cfg.seed, "conf/generate/generate.yaml", minimum=0)
    output = Path(to_absolute_path(cfg.output)) if cfg.output is not None else None
    if output is not None:
        check_output(output, cfg.output)
    ckpt = resolve_checkpoint(to_absolute_path(cfg.ckpt_path), "best")
    if cfg.mode == "serve":
        return serve_page(cfg, ckpt)
    if cfg.mode == "export":
        return export(cfg, ckpt, output)
    model, vocab = load_model(ckpt, cfg.device)
    if cfg.mode == "score":
        result = score(cfg, ckpt, model, vocab, stream)
        if multirun():
            keep_job(cfg, {k: result[k] for k in ("ppl", "loss", "characters_scored")})
        return result

    prompt = cfg.prompt
    if cfg.prompt_file is not None:
        prompt = read_text(to_absolute_path(cfg.prompt_file), key="prompt_file")
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    mixer = mixed_sampling(cfg, ckpt, model, vocab)
    streaming = cfg.num_samples == 1
    if streaming:
        stream.write(prompt)
        stream.flush()
    samples = sample_text(
        model, vocab, prompt=prompt, length=cfg.length, temperature=cfg.temperature,
        top_k=cfg.top_k, num_samples=cfg.num_samples, generator=generator,
        on_step=(lambda chars: (stream.write(chars[0]), stream.flush())) if streaming else None,
        mix=mixer,
    )
    texts = [prompt + s for s in samples]
    if streaming:
        stream.write("\n")
    else:
        for i, text in enumerate(texts, 1):
            stream.write(f"--- sample {i}/{len(texts)} ---\n{text}\n")
    combined = "\n\n".join(texts) + "\n"
    if output is not None:
        try:
            output.write_text(combined, encoding="utf-8")
        except OSError as err:  # a full disk, say: the text is on the screen
            raise CharRNNError(f"output={cfg.output}: writing {output} failed "
                               f"({os_error_reason(err)}); the text is above.") from None
    if multirun():
        keep_job(cfg, sample_metrics(model, vocab, samples), sample=combined)
    return texts


def mixed_sampling(cfg: DictConfig, ckpt: Path, model: CharModel,
                   vocab: CharVocab) -> MixedNext | None:
    """mix=ngram: draw from the model mixed with its run's counts, order and λ chosen on the
    validation split (docs/memory.md); None without mix."""
    if not check_mix(cfg.mix, cfg.mix_weight, "conf/generate/generate.yaml"):
        return None
    run = run_folder_of(ckpt)
    if run is None:
        raise CharRNNError(f"mix=ngram needs the checkpoint's run folder (its corpus and split), "
                           f"and {ckpt} is not in one. Set ckpt_path to a run folder.")
    print("mix=ngram: counting the run's train split and choosing the order and λ on its "
          "validation split...", file=sys.stderr, flush=True)
    mixture, counts = prepare_mixture(run, model.cpu(), vocab, cfg.mix_weight)
    model.to(cfg.device)
    best = min(p for p in (mixture.val_ppl, mixture.val_ppl_bucketed, mixture.val_ppl_loglinear)
               if p is not None)
    print(f"mixing with Kneser-Ney order {mixture.order}, {which(mixture)} (validation "
          f"perplexity {best:.4f})", file=sys.stderr)
    return MixedNext(mixture, counts)


def serve_page(cfg: DictConfig, ckpt: Path) -> None:
    """mode=serve: the generation page on a local web server (docs/generation.md)."""
    try:
        from charrnn.serve.server import serve
    except ImportError as err:  # starlette or uvicorn
        raise CharRNNError(f"mode=serve needs the serve extra ({err.name} is not installed): "
                           "pip install -e '.[serve]'.") from None
    check_device(cfg.device)
    folder = run_folder_of(ckpt)
    shown = folder if folder is not None else ckpt
    outputs = Path(to_absolute_path("outputs"))
    try:
        run_id = shown.resolve().relative_to(outputs.parent.resolve()).as_posix()
    except ValueError:
        run_id = str(shown)
    serve(ckpt, run_id, cfg.host, cfg.port, cfg.max_length, cfg.max_streams, outputs,
          cfg.device)


def export(cfg: DictConfig, ckpt: Path, output: Path | None) -> Path:
    """mode=export: the run as one HTML page or an ONNX model (docs/export.md)."""
    written = export_run(ckpt, cfg.format, output)
    size = written.stat().st_size / 1e6
    use = ("open it in any browser, offline" if cfg.format == "html"
           else "run it with onnxruntime (docs/export.md)")
    print(f"wrote {written} ({size:.2f} MB): {use}.", file=sys.stderr)
    return written


def check_output(output: Path, given: str) -> None:
    """Refuse an `output` file that cannot be written, before anything is generated."""
    if output.is_dir():
        raise CharRNNError(f"output={given} is a folder. Set output to a file, e.g. "
                           f"`output={Path(given) / 'sample.txt'}`.")
    reason = unwritable_reason(output.parent)
    if reason is not None:
        raise CharRNNError(f"output={given}: cannot write {output}: {reason}. Set output to a "
                           "file in a folder you can write.")
    if not output.parent.is_dir():
        raise CharRNNError(
            f"output={given}: the folder {output.parent} does not exist. Create it, or set "
            "output to a file in an existing folder."
        )


def score(cfg: DictConfig, ckpt: Path, model: CharModel, vocab: CharVocab, stream) -> dict:
    """mode=score: perplexity of text_path, or of the checkpoint's run's val/test split."""
    lr, segment = cfg.dynamic.lr, cfg.dynamic.segment
    check_dynamic_args(lr, segment)
    mix = check_mix(cfg.mix, cfg.mix_weight, "conf/generate/generate.yaml")
    if mix and (cfg.split is None or lr > 0):
        raise CharRNNError(
            "mix=ngram scores a split of the checkpoint's own run (its n-gram is counted on "
            "the run's train split and λ chosen on validation), statically: set split=test "
            "(and dynamic.lr=0), or score text_path=... without mix.")
    if (cfg.text_path is None) == (cfg.split is None):
        raise CharRNNError(
            "mode=score needs text_path=<a UTF-8 text file> or split=val|test (that split of the "
            "checkpoint's own run), one of the two."
        )
    if cfg.split is not None:
        from charrnn.data.corpus import split_text  # imports Lightning: only when a split is scored

        run_dir = run_folder_of(ckpt)
        if run_dir is None:
            raise CharRNNError(
                f"split={cfg.split} needs a checkpoint inside a run folder (<run>/checkpoints/), "
                f"got {ckpt}. Set ckpt_path to the run folder, or score a file with text_path=."
            )
        text, source = split_text(run_dir, cfg.split), f"the {cfg.split} split of {run_dir}"
    else:
        text, source = read_text(to_absolute_path(cfg.text_path), key="text_path"), cfg.text_path
    progress = _progress_lines(segment) if lr > 0 else None  # dynamic evaluation takes a while
    mixture = None
    if mix and not lr and cfg.split == "test":  # one pass: the model's own score from it too
        mixture = mixed_scores(run_folder_of(ckpt), model, vocab, cfg.mix_weight)
        n = len(mixture.arrays["model"])
        loss = math.log(mixture.test_ppl_model)
        result = {"characters_scored": n, "loss": loss, "ppl": mixture.test_ppl_model,
                  "unknown_removed": 0, "unknown_chars": ""}
    else:
        result = score_text(model, vocab, text, chunk=segment if lr > 0 else 1000,
                            dynamic_lr=lr, on_progress=progress)
    if result["unknown_removed"]:
        print(f"{result['unknown_removed']} characters not in the vocabulary were removed "
              f"before scoring: {result['unknown_chars']!r}", file=stream)
    how = f"dynamic evaluation, Adam lr {lr:g} every {segment} characters" if lr > 0 else "static"
    print(f"perplexity {result['ppl']:.4f} (loss {result['loss']:.4f} nats/char) over "
          f"{result['characters_scored']:,} characters of {source} ({how})", file=stream)
    if mix:
        mixture = mixture or mixed_scores(run_folder_of(ckpt), model, vocab, cfg.mix_weight)
        print(describe(mixture), file=stream)
        result.update(as_metrics(mixture))
        if cfg.split == "test":
            result["ppl_mixed"] = mixture.test_ppl
    return result


def _progress_lines(segment: int):
    """A progress callback that prints a line to stderr at every tenth of the text scored."""

    def report(done: int, total: int, loss_sum: float) -> None:
        if done * 10 // total > max(done - segment, 0) * 10 // total:
            print(f"  {done:,}/{total:,} characters, perplexity so far "
                  f"{math.exp(loss_sum / done):.4f}", file=sys.stderr, flush=True)

    return report


def keep_job(cfg: DictConfig, metrics: dict, sample: str | None = None) -> None:
    """A multirun job keeps its config, its metrics (for the sweep summary) and its text."""
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    if sample is not None:
        (job_dir / "sample.txt").write_text(sample, encoding="utf-8")
    (job_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (job_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path="conf/generate", config_name="generate")
def main(cfg: DictConfig) -> None:
    job_dir = None
    if multirun():  # a sweep job has a folder of its own; a single generation writes none
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        print(f"\n=== {' '.join(HydraConfig.get().overrides.task)} ===", flush=True)
    try:
        generate(cfg)
    except KeyboardInterrupt:  # Ctrl-C: the text so far stays on screen; the shell's status
        written = "" if cfg.output is None else f" ({cfg.output} not written)"
        print(f"\ninterrupted{written}.", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        fail(err, job_dir)


if __name__ == "__main__":
    sys.argv[1:] = prepare_overrides(sys.argv[1:], **ENTRY_POINTS["generate.py"])
    main()
