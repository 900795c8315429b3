"""Train a character model: `python train.py [overrides]`; see README.md and conf/train/."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from charrnn.cli import ENTRY_POINTS, fail, prepare_overrides
from charrnn.studies.mixture import add_mixed_test_score, check_mix, describe
from charrnn.studies.storage import take_password
from charrnn.training.run import train  # before Hydra's logging: Lightning keeps its plain lines
from charrnn.training.run_folder import register_resolvers, run_folder_of
from charrnn.training.trackers import take_secret

register_resolvers()


def resume_config(cfg: DictConfig) -> DictConfig:
    """On resume, the original run's overrides apply first, then this command line's (a search
    trial's reporting settings are left behind: the resumed run is a run of its own)."""
    folder = run_folder_of(cfg.ckpt_path)
    original = folder / ".hydra" / "overrides.yaml" if folder else None
    if original is None or not original.is_file():
        return cfg
    keep = lambda o: not o.lstrip("+~").startswith(("hydra.", "ckpt_path=", "search."))  # noqa: E731
    overrides = [o for o in OmegaConf.load(original) if keep(o)]
    overrides += [o for o in HydraConfig.get().overrides.task if keep(o)]
    overrides.append(f"ckpt_path={cfg.ckpt_path}")
    return hydra.compose(config_name="train", overrides=overrides)


def search_callbacks(cfg: DictConfig) -> tuple:
    """In a search trial's job: the callback that reports to its study (docs/search.md)."""
    if cfg.search.trial is None:
        return ()
    from charrnn.studies.search import TrialReporter  # optuna: only in a search

    return (TrialReporter(**cfg.search),)


@hydra.main(version_base="1.3", config_path="conf/train", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(cfg.run_dir)  # Hydra's output folder unless run_dir is set
    try:
        if cfg.ckpt_path is not None:
            cfg.ckpt_path = to_absolute_path(cfg.ckpt_path)
            cfg = resume_config(cfg)
        if cfg.data.path is not None:
            cfg.data.path = to_absolute_path(cfg.data.path)
        mix = check_mix(cfg.mix, cfg.mix_weight, "conf/train/train.yaml")  # before training
        mixed = []

        def mixed_test_score(metrics: dict) -> dict[str, float]:
            if not mix or metrics["test_ppl"] is None:
                return {}
            mixed.append(add_mixed_test_score(run_dir, metrics["best_checkpoint"],
                                              cfg.mix_weight))
            return {"test/ppl_mixed": mixed[0].test_ppl}

        metrics = train(cfg, last_callbacks=search_callbacks(cfg), after_test=mixed_test_score)
        mixture = mixed[0] if mixed else None
    except KeyboardInterrupt as err:  # Ctrl-C: say what is kept; the shell's status for SIGINT
        if cfg.search.trial is not None:
            raise  # the search's sweeper says how to continue the whole search
        print(f"\n{err or 'interrupted.'}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        fail(err, run_dir)
        return None
    test = f"test ppl {metrics['test_ppl']:.4f}" if metrics["test_ppl"] is not None else "no test"
    print(
        f"\nrun folder: {run_dir}\n"
        f"best val ppl {metrics['best_val_ppl']:.4f} (epoch {metrics['best_epoch']}), {test}, "
        f"epochs run: {metrics['epochs_run']}"
        f"{' (early stopped)' if metrics['early_stopped'] else ''}, "
        f"{metrics['train_chars_per_s']:,} train char/s, {metrics['wall_time_s']:.0f} s"
    )
    if mixture is not None:
        print(describe(mixture))
    return metrics["test_loss"]


if __name__ == "__main__":
    # A search's database password and a tracking server's go into the environment before
    # Hydra sees the command line: Hydra writes the overrides into every folder it makes.
    sys.argv[1:] = [take_secret(take_password(a)) for a in sys.argv[1:]]
    sys.argv[1:] = prepare_overrides(sys.argv[1:], **ENTRY_POINTS["train.py"])
    main()
