"""The run folder: its layout, finding its checkpoints, recording a failure; the resolvers conf/
uses, and train.yaml composed outside train.py (no Lightning import: generate.py starts fast).
Loading a checkpoint safely is charrnn.generation.loading's."""

from __future__ import annotations

import itertools
import shutil
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from charrnn import host
from charrnn.errors import CharRNNError, folder_error, os_error_reason, unwritable_reason

# A run folder's layout.
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"
LAST = "last.ckpt"
BEST = "best.ckpt"


def run_folder_of(path: str | Path | None) -> Path | None:
    """The run folder a checkpoint (or run folder) belongs to, or None if it is neither."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.is_dir() and (path / CHECKPOINT_DIR).is_dir():
        return path
    if path.is_file() and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return None


def resolve_checkpoint(path: str | Path, which: str, key: str = "ckpt_path") -> Path:
    """A checkpoint file, or a run folder's `last.ckpt` (which="last") or best one ("best")."""
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / CHECKPOINT_DIR
        candidate = folder / (LAST if which == "last" else BEST)
        if not candidate.is_file():
            raise CharRNNError(
                f"{key}={path} is a folder without a {which} checkpoint (looked for {candidate}). "
                "Set it to a run folder under outputs/ or to a .ckpt file."
            )
        return candidate
    if not path.is_file():
        raise CharRNNError(
            f"{key}={path} does not exist. Set {key} to a .ckpt file or to a run folder under "
            "outputs/ (e.g. outputs/2026-01-01/12-00-00)."
        )
    return path


_CLAIMED: dict[str, str] = {}  # claim_folder's answers in this process


def claim_folder(path: str) -> str:
    """`path`, or else `path-2`, `path-3`, ...: the first that did not exist, created now.

    Creating a folder is atomic, so runs started in the same second (outputs/<date>/<time>) get
    a folder each instead of writing into one. The same `path` gets the same answer within a
    process, however often the config is resolved.
    """
    if path not in _CLAIMED:
        base = Path(path)
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            for n in itertools.count(1):
                folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
                try:
                    folder.mkdir()
                except FileExistsError:
                    continue
                _CLAIMED[path] = str(folder)
                break
        except OSError as err:  # a file in the way, no permission, a full disk
            reason = unwritable_reason(base.parent) or os_error_reason(err)
            raise folder_error(base.parent, "hydra.run.dir", reason) from None
    return _CLAIMED[path]


def register_resolvers() -> None:
    """Resolvers used by the hydra sections of conf/.

    A new run (or sweep) claims a folder of its own; a resumed run writes into its own run
    folder, and keeps the original run's .hydra/ (its overrides are what resuming it again
    needs).
    """
    OmegaConf.register_new_resolver(
        "charrnn_run_dir", lambda ckpt, default: str(run_folder_of(ckpt) or claim_folder(default)),
        replace=True,
    )
    # A new sweep claims its folder too. Cached: every job's config (composed again, and in a
    # worker process of its own with launcher=parallel) gets the folder the sweep claimed.
    OmegaConf.register_new_resolver("charrnn_sweep_dir", claim_folder, replace=True,
                                    use_cache=True)
    OmegaConf.register_new_resolver(
        "charrnn_hydra_subdir",
        lambda ckpt: (
            f".hydra/resume-{datetime.now():%Y%m%d-%H%M%S}" if run_folder_of(ckpt) else ".hydra"
        ),
        replace=True,
    )
    # conf/generate/generate.yaml: a single generation writes no .hydra/ folder, a sweep job does.
    OmegaConf.register_new_resolver(
        "charrnn_multirun_only",
        lambda mode, value: value if str(mode).endswith("MULTIRUN") else None,
        replace=True,
    )
    # conf/train/launcher/parallel.yaml: divide the cores among jobs running at the same time.
    OmegaConf.register_new_resolver(
        "charrnn_threads_per_job",
        lambda n_jobs: max(1, host.usable_cores() // max(1, int(n_jobs))),
        replace=True,
    )


def train_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/train/train.yaml composed with `overrides`, outside train.py (inside a running Hydra
    app, with its compose)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=list(overrides))
    conf = Path(__file__).resolve().parents[2] / "conf" / "train"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def record_failure(run_dir: Path, err: Exception, keep: bool = False) -> None:
    """Leave no half-written run folder that looks like a result.

    A folder holding only Hydra's config and log (the run failed before training) is removed,
    unless `keep` (a sweep job: the sweep summary lists it as failed); otherwise the error goes
    to error.txt, except in a folder holding a finished run (a failed resume must not mark it
    as failed).
    """
    if not run_dir.is_dir() or (run_dir / METRICS_FILE).exists():
        return
    if not keep and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)
    else:
        message = str(err) if isinstance(err, CharRNNError) else f"{type(err).__name__}: {err}"
        (run_dir / ERROR_FILE).write_text(f"{message}\n")
