"""Train the char-RNN: `python train.py [overrides]`; see README.md and conf/train/train.yaml."""

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from charrnn.checkpoints import record_failure, register_resolvers, run_folder_of
from charrnn.errors import CharRNNError
from charrnn.training import train

register_resolvers()


def resume_config(cfg: DictConfig) -> DictConfig:
    """On resume, the original run's overrides apply first, then this command line's."""
    folder = run_folder_of(cfg.ckpt_path)
    original = folder / ".hydra" / "overrides.yaml" if folder else None
    if original is None or not original.is_file():
        return cfg
    keep = lambda o: not o.lstrip("+~").startswith(("hydra.", "ckpt_path="))  # noqa: E731
    overrides = [o for o in OmegaConf.load(original) if keep(o)]
    overrides += [o for o in HydraConfig.get().overrides.task if keep(o)]
    overrides.append(f"ckpt_path={cfg.ckpt_path}")
    return hydra.compose(config_name="train", overrides=overrides)


@hydra.main(version_base="1.3", config_path="conf/train", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.ckpt_path is not None:
            cfg.ckpt_path = to_absolute_path(cfg.ckpt_path)
            cfg = resume_config(cfg)
        if cfg.data.path is not None:
            cfg.data.path = to_absolute_path(cfg.data.path)
        metrics = train(cfg)
    except Exception as err:
        # In a sweep, a failed job is recorded (error.txt) and the other jobs go on.
        if not (isinstance(err, CharRNNError) or multirun):
            raise
        if not isinstance(err, CharRNNError):
            traceback.print_exc()
        record_failure(run_dir, err, keep=multirun)
        print(f"\nerror: {err}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    print(
        f"\nrun folder: {run_dir}\n"
        f"best val ppl {metrics['best_val_ppl']:.4f} (epoch {metrics['best_epoch']}), "
        f"test ppl {metrics['test_ppl']:.4f}, epochs run: {metrics['epochs_run']}"
        f"{' (early stopped)' if metrics['early_stopped'] else ''}, "
        f"{metrics['train_chars_per_s']:,} train char/s, {metrics['wall_time_s']:.0f} s"
    )
    return metrics["test_loss"]


if __name__ == "__main__":
    main()
