"""Generate text from a checkpoint: `python generate.py ckpt_path=<run folder or .ckpt>`."""

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from charrnn.checkpoints import register_resolvers, resolve_checkpoint
from charrnn.errors import CharRNNError
from charrnn.sampling import load_model, sample_metrics, sample_text, score_text
from charrnn.vocab import read_text

register_resolvers()


def generate(cfg: DictConfig, stream=sys.stdout) -> list[str] | dict:
    """Sample (or score) as configured; returns the samples (or the score)."""
    if cfg.ckpt_path is None:
        raise CharRNNError(
            "no checkpoint given: set ckpt_path to a run folder under outputs/ or a .ckpt file, "
            "e.g. `python generate.py ckpt_path=outputs/2026-01-01/12-00-00`."
        )
    if cfg.mode not in ("sample", "score"):
        raise CharRNNError(f"mode must be sample or score, got {cfg.mode!r}.")
    ckpt = resolve_checkpoint(to_absolute_path(cfg.ckpt_path), "best")
    model, vocab = load_model(ckpt, cfg.device)
    if cfg.mode == "score":
        if cfg.text_path is None:
            raise CharRNNError("mode=score needs text_path=<a UTF-8 text file to score>.")
        result = score_text(model, vocab, read_text(to_absolute_path(cfg.text_path)))
        if result["unknown_removed"]:
            print(f"{result['unknown_removed']} characters not in the vocabulary were removed "
                  f"before scoring: {result['unknown_chars']!r}", file=stream)
        print(f"perplexity {result['ppl']:.4f} (loss {result['loss']:.4f} nats/char) over "
              f"{result['characters_scored']:,} characters", file=stream)
        return result

    prompt = cfg.prompt
    if cfg.prompt_file is not None:
        prompt = read_text(to_absolute_path(cfg.prompt_file))
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    streaming = cfg.num_samples == 1
    if streaming:
        stream.write(prompt)
        stream.flush()
    samples = sample_text(
        model, vocab, prompt=prompt, length=cfg.length, temperature=cfg.temperature,
        top_k=cfg.top_k, num_samples=cfg.num_samples, generator=generator,
        on_step=(lambda chars: (stream.write(chars[0]), stream.flush())) if streaming else None,
    )
    texts = [prompt + s for s in samples]
    if streaming:
        stream.write("\n")
    else:
        for i, text in enumerate(texts, 1):
            stream.write(f"--- sample {i}/{len(texts)} ---\n{text}\n")
    combined = "\n\n".join(texts) + "\n"
    if cfg.output is not None:
        Path(to_absolute_path(cfg.output)).write_text(combined, encoding="utf-8")
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # A study's job keeps its text, its config and what the sweep summary compares.
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        (job_dir / "sample.txt").write_text(combined, encoding="utf-8")
        (job_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        metrics = sample_metrics(model, vocab, samples)
        (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return texts


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        overrides = " ".join(HydraConfig.get().overrides.task)
        print(f"\n=== {overrides} ===", flush=True)
    try:
        generate(cfg)
    except CharRNNError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
