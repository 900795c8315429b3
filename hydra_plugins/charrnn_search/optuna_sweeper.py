"""Hydra sweeper for `python train.py -m hparams_search=<name>`: an Optuna study that prunes.

Hydra finds sweepers in the hydra_plugins package only; the study, its trials and their
reporting live in charrnn.studies.search. hydra-optuna-sweeper cannot prune (its jobs have no trial
object) and pins optuna<3, hence this one (docs/search.md).
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import contextlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


@dataclass
class PrunerConf:
    kind: str = "median"  # median | hyperband | none
    n_startup_trials: int = 3  # median: trials that finish before any is pruned
    n_warmup_steps: int = 2  # median: epochs every trial runs before it can be pruned
    min_resource: int = 2  # hyperband: epochs of the smallest bracket
    reduction_factor: int = 3  # hyperband: 1 / the share of trials promoted each rung


@dataclass
class OptunaSearchConf:
    _target_: str = "hydra_plugins.charrnn_search.optuna_sweeper.OptunaSearchSweeper"
    study_name: str = "search"
    n_trials: int = 20  # trials in the study, those of earlier runs of it included
    max_time: Any = None  # launch no trial after this long: seconds or "HH:MM:SS"
    n_jobs: int = 1  # trials launched together (launcher=parallel runs them side by side)
    seed: int = 0  # TPE sampler seed
    n_startup_trials: int = 5  # TPE: random trials before it models the results
    study_dir: Any = None  # an earlier search's folder: continue its study there
    storage: Any = None  # null: study.db in the sweep folder | journal | a database URL
    heartbeat_s: float = 10.0  # a shared study: how often a search says its trials still run
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: dict[str, Any] = field(default_factory=dict)  # the search space


ConfigStore.instance().store(group="hydra/sweeper", name="charrnn_optuna", node=OptunaSearchConf,
                             provider="charrnn")


def seconds(max_time: Any) -> Any:
    if max_time is None:
        return None
    if isinstance(max_time, (int, float)):
        return float(max_time)
    parts = [float(p) for p in str(max_time).split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


class OptunaSearchSweeper(Sweeper):
    def __init__(self, study_name: str, n_trials: int, max_time: Any, n_jobs: int, seed: int,
                 n_startup_trials: int, study_dir: Any, storage: Any, heartbeat_s: float,
                 pruner: DictConfig, params: DictConfig) -> None:
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.storage, self.heartbeat_s = storage, float(heartbeat_s)
        self.max_seconds = seconds(max_time)
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self.study_dir = None if study_dir is None else Path(study_dir).expanduser().resolve()
        self.pruner = dict(pruner)
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        if self.study_dir is not None:  # jobs, summary and study all in the earlier folder
            with open_dict(config):
                config.hydra.sweep.dir = str(self.study_dir)
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list) -> Any:
        from charrnn.errors import CharRNNError

        try:
            return self._search(arguments)
        except CharRNNError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C, in a trial or between trials
            print(f"\n{self._interrupted()}", file=sys.stderr)
            sys.exit(130)

    def _interrupted(self) -> str:
        """What Ctrl-C leaves, and the command that continues the search."""
        from charrnn.studies.storage import kind, recorded

        spec = getattr(self, "spec", None)
        if spec is None or (kind(spec) != "server" and recorded(self.sweep_dir) is None):
            return "search interrupted before its study was made: nothing to continue."
        folder = os.path.relpath(self.sweep_dir)
        folder = str(self.sweep_dir) if folder.startswith("..") else folder
        # The command as typed; a study in the sweep folder is continued there.
        kept = [a for a in sys.argv[1:] if not a.lstrip("+").startswith(
            ("hydra.sweeper.study_dir=", "hydra.sweep.dir="))]
        where = f"the study in {folder}"
        if kind(spec) == "server":
            where = f"the study {self.study_name} on its server"
        else:
            kept.append(f"hydra.sweeper.study_dir={folder}")
        command = shlex.join(["python", sys.argv[0], *kept])
        return (f"search interrupted. {where[0].upper()}{where[1:]} keeps every finished trial; "
                "the one that was running is run again from its start when the search "
                f"continues:\n  {command}")

    def _search(self, arguments: list) -> list:
        import optuna

        from charrnn.errors import CharRNNError
        from charrnn.studies import search, storage

        # Sweep syntax on the command line joins the space; a plain override is a fixed
        # setting, and takes its key out of the space.
        params = dict(self.params)
        fixed = []
        parser = OverridesParser.create()
        for argument in arguments:
            parsed = parser.parse_override(argument)
            key = parsed.get_key_element()
            if parsed.is_sweep_override():
                params[key] = argument.split("=", 1)[1]
            else:
                params.pop(key, None)
                fixed.append(argument)
        space, fixed_params = search.search_space(params)
        fixed += fixed_params
        identity = {"space": {k: repr(d) for k, d in sorted(space.items())},
                    "fixed": sorted(o for o in fixed if not o.startswith("hydra.sweeper."))}
        search.make_pruner(**self.pruner)  # a bad setting fails here, before any trial
        self.spec = storage.resolve(self.storage, self.sweep_dir)
        shared = storage.kind(self.spec) != "sqlite"
        server = storage.kind(self.spec) == "server"
        search.check_study_file(self.spec, self.study_dir is not None)
        opened = storage.open_storage(self.spec) if server else None  # reached before any file
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            opened = opened or storage.open_storage(self.spec)
            where = (f"the database at {storage.masked(self.spec)}" if server
                     else str(Path(self.spec.removeprefix("journal:").removeprefix("sqlite:///"))))
            lock = contextlib.nullcontext() if shared else search.exclusive(self.sweep_dir)
            with lock:
                study = search.open_study(opened, self.spec, where, self.study_name, identity,
                                          self.study_dir is not None, self.pruner)
                storage.write_record(self.sweep_dir, self.spec, self.study_name)
                # Seeded by the trials so far: a continued search does not draw its first
                # trials again.
                study.sampler = optuna.samplers.TPESampler(
                    seed=self.seed + len(study.trials) + os.getpid() * shared,
                    constant_liar=self.n_jobs > 1 or shared,
                    n_startup_trials=self.n_startup_trials)
                self.grace = self.heartbeat_s * search.GRACE_BEATS if shared else None
                self._mark_lost(study, search)  # SQLite: every trial left running is lost
                return self._run(study, space, fixed, search)
        except CharRNNError:
            if not any(self.sweep_dir.iterdir()):  # nothing of this search to keep
                self.sweep_dir.rmdir()
            raise

    def _mark_lost(self, study, search) -> None:
        lost = search.mark_interrupted(study, self.grace)
        if lost:
            print(f"search: trials {lost} were interrupted; marked failed and not counted, "
                  "each runs again with its settings", flush=True)

    def _run(self, study, space, fixed: list, search) -> list:
        start, returns = time.monotonic(), []
        while True:
            if self.grace is not None:  # a shared study: trials of searches that are gone
                self._mark_lost(study, search)
            done = search.counted_trials(study)
            if done >= self.n_trials:
                print(f"search: {done} trials in the study (hydra.sweeper.n_trials="
                      f"{self.n_trials}): done")
                break
            elapsed = time.monotonic() - start
            if self.max_seconds is not None and elapsed >= self.max_seconds:
                print(f"search: {elapsed / 60:.1f} min spent (hydra.sweeper.max_time): "
                      f"stopping after {done} trials")
                break
            free = self.n_trials - done - search.running_trials(study)
            if free <= 0:  # the last trials run in other searches sharing the study
                time.sleep(self.heartbeat_s)
                continue
            trials = [study.ask(space) for _ in range(min(self.n_jobs, free))]
            for trial in [t for t in trials
                          if not search.within_budget(study, t.number, self.n_trials)]:
                search.give_way(study, trial.number)  # another search asked at the same time
                trials.remove(trial)
            if not trials:
                continue
            returns.append(self._launch(study, trials, fixed, search))
        return returns

    def _launch(self, study, trials: list, fixed: list, search) -> list:
        """One batch of trials as Hydra jobs; each trial told its job's outcome."""
        batch = []
        for trial in trials:
            trial.set_user_attr("job_dir", str(self.sweep_dir / f"trial-{trial.number}"))
            trial.set_user_attr(search.HEARTBEAT, time.time())
            print(f"search: trial {trial.number}: " + " ".join(
                search.override(k, v) for k, v in trial.params.items()), flush=True)
            batch.append([*fixed, *(search.override(k, v) for k, v in trial.params.items()),
                          f"search.storage={search.quoted(self.spec)}",
                          f"search.study={search.quoted(self.study_name)}",
                          f"search.trial={trial.number}",
                          f"hydra.sweep.dir={search.quoted(str(self.sweep_dir))}"])
        with search.heartbeats(study, [t.number for t in trials], self.heartbeat_s):
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
        for trial, result in zip(trials, results):
            job_dir = self.sweep_dir / f"trial-{trial.number}"
            error = None
            if result.status == JobStatus.FAILED:
                error = f"{type(result._return_value).__name__}: {result._return_value}"
            elif (job_dir / "error.txt").is_file():
                error = (job_dir / "error.txt").read_text().strip()
            state = search.finish_trial(study, trial.number, error)
            print(f"search: trial {trial.number} {state}"
                  + (f": {error}" if error else ""), flush=True)
        return results
