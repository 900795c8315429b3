"""Hyperparameter search with Optuna: the study in the sweep folder, trials as Hydra jobs.

The sweeper (hydra_plugins/charrnn_search) asks the study for trials and launches each as a
normal train.py job with `search.storage`, `search.study` and `search.trial` set; the job reports
val/loss into the same study after every epoch (TrialReporter), is pruned when the pruner says
so, and tells the study its result. Whatever launcher runs the jobs (one after another, in
parallel, on SLURM), they share the study through its SQLite file. docs/search.md explains the
design.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from lightning.pytorch.callbacks import Callback
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from charrnn.errors import CharRNNError

STUDY_FILE = "study.db"
LOCK_FILE = "study.lock"
PRUNERS = ("median", "hyperband", "none")
# A trial whose search was stopped stays RUNNING in the study; the next search in the folder
# marks it failed with this user attribute, does not count it against n_trials, and runs its
# settings again as a new trial.
INTERRUPTED = "interrupted"
PRUNER = "pruner"  # study attribute: the settings of the pruner its trials use
RERUN_OF = "rerun_of"  # trial attribute: the interrupted trial this one runs again

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper prints its own lines


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir.resolve() / STUDY_FILE}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    # Jobs running side by side write to one SQLite file: wait for its lock, do not fail.
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def distribution(key: str, spec: Any) -> BaseDistribution | None:
    """The Optuna distribution of a search-space entry written in Hydra's sweep syntax
    (`interval(a, b)`, `tag(log, interval(a, b))`, `int(interval(a, b))`, `range(a, b, s)`,
    `choice(...)`), or None for a fixed value."""
    parser = OverridesParser.create()
    try:
        value = parser.parse_override(f"{key}={spec}").value()
    except Exception as err:
        raise CharRNNError(
            f"search space entry {key}: {spec!r} does not parse ({err}). Write it as "
            "interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), range(a, b, step) "
            "or choice(x, y, ...) in hydra.sweeper.params (conf/train/hparams_search/)."
        ) from None
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    if isinstance(value, RangeSweep):
        values = list(range(value.start, value.stop, value.step)) if all(
            isinstance(v, int) for v in (value.start, value.stop, value.step)
        ) else None
        if values is None:
            raise CharRNNError(f"search space entry {key}: range() takes integers here.")
        return IntDistribution(values[0], values[-1], step=value.step)
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(value.list)
    return None


def search_space(params: dict[str, Any]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions to sample, and the fixed `key=value` overrides among the params."""
    space, fixed = {}, []
    for key, spec in (params or {}).items():
        dist = distribution(key, spec)
        if dist is None:
            fixed.append(f"{key}={spec}")
        else:
            space[key] = dist
    if not space:
        raise CharRNNError(
            "the search space is empty: give hydra.sweeper.params at least one entry such as "
            "`module.lr: tag(log, interval(1e-4, 1e-2))` (conf/train/hparams_search/)."
        )
    return space, fixed


def quoted(value: str) -> str:
    """A string as a quoted Hydra override value (paths may hold `,`, `=` or spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override(key: str, value: Any) -> str:
    """A `key=value` command-line override for a sampled value."""
    if isinstance(value, float):
        value = f"{value:.6g}"
    elif isinstance(value, bool):
        value = str(value).lower()
    elif value is None:
        value = "null"
    return f"{key}={value}"


def make_pruner(kind: str, n_startup_trials: int, n_warmup_steps: int, min_resource: int,
                reduction_factor: int) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                           n_warmup_steps=n_warmup_steps)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource,
                                              reduction_factor=reduction_factor)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise CharRNNError(
        f"unknown hydra.sweeper.pruner.kind {kind!r}: allowed values are {', '.join(PRUNERS)}."
    )


def open_study(sweep_dir: Path, study_name: str, identity: dict[str, Any], continuing: bool,
               pruner: dict[str, Any]) -> optuna.Study:
    """A new study in `sweep_dir`, or (`continuing`) the one there, which must be the same
    search: the same name, search space and fixed settings (`identity`). `pruner`: the
    settings of make_pruner, stored with the study for the trials' jobs."""
    path = sweep_dir / STUDY_FILE
    if continuing and not path.is_file():
        raise CharRNNError(
            f"hydra.sweeper.study_dir={sweep_dir} holds no {STUDY_FILE}: give the folder of an "
            "earlier search (outputs/search/<date>/<time>), or leave study_dir unset to start one."
        )
    if not continuing and path.exists():
        raise CharRNNError(
            f"{path} already exists: this folder holds another search. To continue it, add "
            f"hydra.sweeper.study_dir={sweep_dir}; to start a new one, choose another "
            "hydra.sweep.dir."
        )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url(sweep_dir))
    if not continuing:
        study = optuna.create_study(study_name=study_name, storage=storage,
                                    pruner=make_pruner(**pruner), direction="minimize")
        for key, value in identity.items():
            study.set_user_attr(key, value)
        study.set_user_attr(PRUNER, pruner)
        return study
    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        raise CharRNNError(
            f"{path} holds the search {', '.join(names)}, not {study_name}: continue it with "
            f"the hparams_search it was started with."
        )
    study = optuna.load_study(study_name=study_name, storage=storage,
                              pruner=make_pruner(**pruner))
    different = _differences(study.user_attrs, identity)
    if different:
        raise CharRNNError(
            f"hydra.sweeper.study_dir={sweep_dir} holds another search than this command: "
            f"{'; '.join(different)}. Continue it with the same search space and fixed "
            "overrides, or start a new search without study_dir."
        )
    return study


def _differences(study: dict[str, Any], command: dict[str, Any]) -> list[str]:
    """What differs between a study's identity and a command's, one phrase each."""
    old_space, new_space = study.get("space", {}), command["space"]
    lines = [f"{key}: {old_space.get(key, 'not searched')} in the study, "
             f"{new_space.get(key, 'not searched')} now"
             for key in sorted(set(old_space) | set(new_space))
             if old_space.get(key) != new_space.get(key)]
    old_fixed, new_fixed = set(study.get("fixed", [])), set(command["fixed"])
    lines += [f"{o} only in the study" for o in sorted(old_fixed - new_fixed)]
    lines += [f"{o} only in this command" for o in sorted(new_fixed - old_fixed)]
    return lines


@contextmanager
def exclusive(sweep_dir: Path) -> Iterator[None]:
    """Only one search at a time in a folder; the lock goes with its process (even kill -9)."""
    with open(sweep_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise CharRNNError(
                f"another search is running in {sweep_dir} (process {f.read().strip() or '?'}): "
                "wait for it to end, or start a new search without hydra.sweeper.study_dir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def mark_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a search that was stopped (Ctrl-C, kill -9): failed, marked as
    interrupted, and queued to run again with the same settings (the next trial asked for)."""
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RERUN_OF: trial.number})
        numbers.append(trial.number)
    return numbers


def counted_trials(study: optuna.Study) -> int:
    """Trials that ran to their end: complete, pruned, or failed by their own error."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))
        for t in study.get_trials(deepcopy=False)
    )


def finish_trial(study: optuna.Study, number: int, error: str | None) -> str:
    """After a trial's job: a trial the job did not tell (it failed) is failed with its error."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state == TrialState.RUNNING:
        study._storage.set_trial_user_attr(trial._trial_id, "error",
                                           error or "the job ended without a result")
        study.tell(number, state=TrialState.FAIL)
        return "failed"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
        trial.state, trial.state.name.lower())


class TrialReporter(Callback):
    """In a search trial's job: val/loss to the trial after every validation; stops the run
    when the pruner prunes it; at the end tells the study the best val/loss (or pruned)."""

    def __init__(self, storage: str, study: str, trial: int) -> None:
        self.storage, self.study_name, self.number = storage, study, trial
        self.pruned = False
        self._study: optuna.Study | None = None
        self._trial: optuna.Trial | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._study = optuna.load_study(study_name=self.study_name,
                                        storage=open_storage(self.storage))
        # The pruner is the sweeper's (hydra.sweeper.pruner), kept with the study for its jobs.
        self._study.pruner = make_pruner(**self._study.user_attrs[PRUNER])
        frozen = next(t for t in self._study.get_trials(deepcopy=False)
                      if t.number == self.number)
        self._trial = optuna.trial.Trial(self._study, frozen._trial_id)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._trial is None or self.pruned:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None:
            return
        loss, epoch = float(loss), trainer.current_epoch + 1
        self._trial.report(loss if math.isfinite(loss) else math.inf, step=epoch)
        if self._trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
            print(f"search: trial {self.number} pruned after epoch {epoch}")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._study is None:
            return
        self._study._storage.set_trial_user_attr(
            self._trial._trial_id, "epochs", trainer.current_epoch)
        if self.pruned:
            self._study.tell(self.number, state=TrialState.PRUNED)
            return
        best = trainer.checkpoint_callback.best_model_score
        if best is None or not math.isfinite(float(best)):
            return  # no result: the sweeper marks the trial failed
        self._study.tell(self.number, float(best))
