"""Hyperparameter search with Optuna: a study, trials as Hydra jobs.

The sweeper (hydra_plugins/charrnn_search) asks the study for trials and launches each as a
normal train.py job with `search.storage`, `search.study` and `search.trial` set; the job reports
val/loss into the same study after every epoch (TrialReporter), is pruned when the pruner says
so, and tells the study its result. Whatever launcher runs the jobs (one after another, in
parallel, on SLURM), they share the study through its storage (charrnn.studies.storage): a
SQLite file in the sweep folder, a journal file, or a database server that several searches
(workers) share. docs/search.md explains the design.
"""

from __future__ import annotations

import math
import os
import threading
import time
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
from charrnn.studies.storage import kind, open_storage

LOCK_FILE = "study.lock"
PRUNERS = ("median", "hyperband", "none")
# A trial whose search was stopped stays RUNNING in the study; the next search that finds it
# (its own lock held, or its heartbeat stale) marks it failed with this user attribute, does not
# count it against n_trials, and runs its settings again as a new trial.
INTERRUPTED = "interrupted"
PRUNER = "pruner"  # study attribute: the settings of the pruner its trials use
RERUN_OF = "rerun_of"  # trial attribute: the interrupted trial this one runs again
HEARTBEAT = "heartbeat"  # trial attribute: when the search running it last said so (unix time)
SURPLUS = "surplus"  # trial attribute: asked past n_trials by a search racing another; not run
GRACE_BEATS = 6  # heartbeats missed before a running trial of a shared study counts as lost

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper prints its own lines


def set_trial_attr(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str,
                   value: Any) -> None:
    optuna.trial.Trial(study, trial._trial_id).set_user_attr(key, value)


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


def check_study_file(spec: str, continuing: bool) -> None:
    """Before a study file is opened (and so made): continuing needs the earlier search's file,
    and a new SQLite search needs a folder without one (a journal is shared: joined)."""
    if kind(spec) == "server":
        return
    path = Path(spec.removeprefix("journal:").removeprefix("sqlite:///"))
    if continuing and not path.is_file():
        raise CharRNNError(
            f"hydra.sweeper.study_dir={path.parent} holds no {path.name}: give the folder of an "
            "earlier search (outputs/search/<date>/<time>), or leave study_dir unset to start one."
        )
    if not continuing and kind(spec) == "sqlite" and path.exists():
        raise CharRNNError(
            f"{path} already exists: this folder holds another search. To continue it, add "
            f"hydra.sweeper.study_dir={path.parent}; to start a new one, choose another "
            "hydra.sweep.dir."
        )


def open_study(storage: optuna.storages.BaseStorage, spec: str, where: str, study_name: str,
               identity: dict[str, Any], continuing: bool, pruner: dict[str, Any]
               ) -> optuna.Study:
    """The search's study in `storage`. SQLite: a new study in a new folder, or (`continuing`)
    the one there. A shared study (journal, server): created by the first search, joined by the
    next. Either way an existing study must be the same search: the same name, search space
    and fixed settings (`identity`). `pruner`: make_pruner's settings, kept with the study for
    the trials' jobs. `where`: the storage as the user knows it, for the messages."""
    names = optuna.get_all_study_names(storage)
    shared = kind(spec) != "sqlite"
    if continuing and names and study_name not in names:
        raise CharRNNError(
            f"{where} holds the search {', '.join(names)}, not {study_name}: continue it with "
            "the hparams_search it was started with."
        )
    if study_name not in names:
        study = optuna.create_study(study_name=study_name, storage=storage,
                                    pruner=make_pruner(**pruner), direction="minimize",
                                    load_if_exists=shared)  # another worker may be first
        if not study.user_attrs:
            for key, value in identity.items():
                study.set_user_attr(key, value)
            study.set_user_attr(PRUNER, pruner)
            return study
    else:
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  pruner=make_pruner(**pruner))
    different = _differences(study.user_attrs, identity)
    if different:
        raise CharRNNError(
            f"{where} holds another search than this command: {'; '.join(different)}. Continue "
            "it with the same search space and fixed overrides, or start a new search (another "
            "study_name, or without study_dir)."
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
        if not _lock(f):
            f.seek(0)
            try:
                holder = f.read().strip() or "?"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "?"
            raise CharRNNError(
                f"another search is running in {sweep_dir} (process {holder}): "
                "wait for it to end, or start a new search without hydra.sweeper.study_dir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _lock(f: Any) -> bool:
    """Take an open file's lock without waiting; False if another process holds it. flock on
    Unix; on Windows, which has no fcntl, msvcrt's lock of the first byte. Either goes with the
    process that holds it."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        f.seek(0)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def mark_interrupted(study: optuna.Study, grace: float | None = None) -> list[int]:
    """Running trials whose search is gone (Ctrl-C, kill -9): failed, marked as interrupted,
    and queued to run again with the same settings (the next trial asked for). `grace` None:
    every running trial (this search holds the folder's lock, nothing else runs); otherwise
    those whose search has sent no heartbeat for `grace` seconds (a shared study)."""
    numbers, now = [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if grace is not None:
            last = trial.user_attrs.get(HEARTBEAT) or trial.datetime_start.timestamp()
            if now - last < grace:
                continue
        try:
            set_trial_attr(study, trial, INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another search marked it first
            continue
        study.enqueue_trial(trial.params, user_attrs={RERUN_OF: trial.number})
        numbers.append(trial.number)
    return numbers


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against n_trials once it ends (not interrupted, not surplus)."""
    return not (trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(SURPLUS))


def counted_trials(study: optuna.Study) -> int:
    """Trials that ran to their end: complete, pruned, or failed by their own error."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and _counts(t))
        for t in study.get_trials(deepcopy=False)
    )


def running_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def within_budget(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial `number` is among the first `n_trials` that count, by trial number: when
    two searches sharing a study ask at once, the one with the later number gives way (trial
    numbers are handed out by the storage, one at a time)."""
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number <= number and _counts(t)]
    return len(ahead) <= n_trials


def give_way(study: optuna.Study, number: int) -> None:
    """A trial asked past n_trials: failed and marked surplus, never run, never counted."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    set_trial_attr(study, trial, SURPLUS, True)
    study.tell(number, state=TrialState.FAIL)


@contextmanager
def heartbeats(study: optuna.Study, numbers: list[int], interval: float) -> Iterator[None]:
    """While the trials `numbers` run, their HEARTBEAT attribute is renewed every `interval`
    seconds from a thread of this search: when it stops (the search was killed), the other
    searches sharing the study find them lost after GRACE_BEATS intervals."""
    stop = threading.Event()
    trials = [t for t in study.get_trials(deepcopy=False) if t.number in numbers]

    def beat() -> None:
        while True:
            for trial in trials:
                try:
                    set_trial_attr(study, trial, HEARTBEAT, time.time())
                except Exception:  # finished meanwhile, or the storage is busy: next time
                    pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="charrnn-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finish_trial(study: optuna.Study, number: int, error: str | None) -> str:
    """After a trial's job: a trial the job did not tell (it failed) is failed with its error."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state == TrialState.RUNNING:
        set_trial_attr(study, trial, "error", error or "the job ended without a result")
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
        self._trial.set_user_attr("epochs", trainer.current_epoch)
        if self.pruned:
            self._study.tell(self.number, state=TrialState.PRUNED)
            return
        best = trainer.checkpoint_callback.best_model_score
        if best is None or not math.isfinite(float(best)):
            return  # no result: the sweeper marks the trial failed
        self._study.tell(self.number, float(best))
