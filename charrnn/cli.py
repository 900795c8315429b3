"""What train.py and generate.py share around Hydra: reading the command line, failing, and
finding runs (no Lightning import: generate.py starts fast)."""

from __future__ import annotations

import difflib
import functools
import re
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from charrnn.errors import CharRNNError, folder_error, unwritable_reason
from charrnn.training.run_folder import BEST, CHECKPOINT_DIR, record_failure

CONF = Path(__file__).resolve().parents[1] / "conf"
# Each entry point's command line, for prepare_overrides: its configs, the keys whose values are
# text, and whether a key added with `+` can mean anything to it.
ENTRY_POINTS = {
    "train.py": {"conf_dir": CONF / "train", "text_keys": ("samples.prompt",), "additions": True},
    "generate.py": {"conf_dir": CONF / "generate", "text_keys": ("prompt",), "additions": False},
}
OVERRIDE = re.compile(r"(?P<prefix>\+{0,2}|~)(?P<key>[\w.@/-]+)=(?P<value>.*)", re.DOTALL)


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra string: it parses back to exactly `text`.

    Hydra keeps backslashes as they are, except before a quote (or the closing quote), where
    each must be doubled and the quote escaped.
    """
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def prepare_overrides(args: list[str], text_keys: tuple[str, ...],
                      conf_dir: Path | None = None, additions: bool = True) -> list[str]:
    """The command-line arguments for Hydra, with text values quoted, every override checked.

    A prompt is text, in any script: an unquoted value of a key in `text_keys` is quoted for
    Hydra (whose grammar has no room for, say, Cyrillic or a comma in an unquoted value).
    Any other override Hydra cannot parse ends here with the quoted form to use, exit 2; so
    does, given the script's `conf_dir`, a key no config there has or a group option it lacks
    (Hydra's own answer to a misspelt key suggests adding it with `+`). `additions`: whether a
    key added with `+key=...` can mean anything to the script (train.py: an argument of the
    class a section configures); if not, it is checked like any other.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    prepared, parser = [], OverridesParser.create()
    known = config_keys(conf_dir, additions) if conf_dir is not None else None
    if known is not None:
        known.start()
    for arg in args:
        match = OVERRIDE.fullmatch(arg)
        if arg.startswith("-") or match is None:
            prepared.append(arg)  # a flag (-m, --cfg job, ...) or a flag's value
            continue
        value = match["value"]
        if match["key"] in text_keys and not value.startswith(("'", '"')):
            arg = f"{match['prefix']}{match['key']}={hydra_quote(value)}"
        try:
            parsed = parser.parse_override(arg)
        except HydraException as err:  # the parser's errors, a lexer's among them
            reason = str(err).strip().splitlines()[0]
            fail(CharRNNError(
                f"the override {arg!r} cannot be read ({reason}). Quote its value for Hydra "
                f"inside quotes for the shell: '{match['prefix']}{match['key']}="
                f"\"{value}\"' (see https://hydra.cc/docs/advanced/override_grammar/basic/)."
            ))
        if known is not None:
            try:
                known.check(parsed)
            except CharRNNError as err:
                fail(err)
        prepared.append(arg)
    if known is not None:
        try:
            known.check_options()
        except CharRNNError as err:
            fail(err)
    return prepared


@functools.lru_cache
def config_keys(conf_dir: Path, additions: bool) -> ConfigKeys:
    """ConfigKeys, read once per process (the docs test checks a hundred command lines)."""
    return ConfigKeys(conf_dir, additions)


class ConfigKeys:
    """Every key and group option the YAML files of a script's config folder can set."""

    def __init__(self, conf_dir: Path, additions: bool = True) -> None:
        from omegaconf import OmegaConf

        self.additions = additions
        self.shown = Path(conf_dir.parent.name, conf_dir.name)  # conf/train, as in the docs
        self.groups = {d.name: sorted(f.stem for f in d.glob("*.yaml"))
                       for d in conf_dir.iterdir() if d.is_dir()}
        self.keys: set[str] = set()
        # keys only a group option's own package sets (logger.mlflow.*: logger=mlflow), and
        # which options set them; the options chosen on this command line, and by default
        self.option_keys: dict[str, set[tuple[str, str]]] = {}
        self.chosen: dict[str, list[str]] = {}
        self.set_by_option: list[str] = []
        self.defaults: dict[str, str] = {}
        # an option -> the options that include it (logger=many includes logger=mlflow)
        setters: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for path in sorted(conf_dir.rglob("*.yaml")):
            group = path.parent.relative_to(conf_dir).as_posix()
            header = path.read_text(encoding="utf-8").partition("\n")[0]
            package = "" if group == "." or "@package _global_" in header else group
            config = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
            included = config.pop("defaults", []) if package else []
            own: set[str] = set()
            self._add(config, package.replace("/", "."), own)
            self.keys |= own
            if group == ".":
                self.defaults.update(d for entry in config.get("defaults", [])
                                     if isinstance(entry, dict) for d in entry.items()
                                     if isinstance(d[1], str))
            elif package and path.parent.parent == conf_dir:
                # logger.mlflow.tracking_uri, not data.path: a key of the option's own section
                for option in (path.stem, *(o for o in included if isinstance(o, str))):
                    setters.setdefault((group, option), set()).add((group, path.stem))
                for key in own:
                    if key.count(".") >= 2:
                        self.option_keys.setdefault(key, set()).add((group, path.stem))
        for options in self.option_keys.values():
            for option in list(options):
                options |= setters.get(option, set())

    def start(self) -> None:
        """Forget the options and keys of the last command line checked."""
        self.chosen, self.set_by_option = {}, []

    def _add(self, config: dict, prefix: str, keys: set[str]) -> None:
        for key, value in config.items():
            if not prefix and key in ("defaults", "hydra"):
                continue  # Hydra's own
            dotted = f"{prefix}.{key}" if prefix else str(key)
            keys.add(dotted)
            if isinstance(value, dict):
                self._add(value, dotted, keys)

    def check(self, override) -> None:
        """Raise a CharRNNError for a key or group option the configs lack."""
        from hydra.core.override_parser.types import Glob, OverrideType

        key = override.key_or_group
        if key.startswith("hydra") or override.package is not None:
            return  # Hydra's settings and groups: Hydra checks them
        if key in self.groups and isinstance(override.value(), Glob):
            return  # glob(...) picks among the options that are there
        if key in self.groups:
            options = self.groups[key]
            value = override.value()
            values = ([str(v) for v in value] if isinstance(value, list)  # logger=[csv,mlflow]
                      else list(override.sweep_string_iterator()) if override.is_sweep_override()
                      else [override.get_value_element_as_str()])
            if not override.is_sweep_override():
                self.chosen[key] = values
            for value in values:
                if value not in (*options, "null"):
                    raise CharRNNError(
                        f"unknown {key}={value}: the options of {key} are "
                        f"{', '.join(options)} (the files in {self.shown / key})."
                    )
            return
        added = override.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
        if key in self.keys or (added and self.additions):
            if key in self.option_keys and not added:
                self.set_by_option.append(key)
            return  # `+key=...` adds a key on purpose
        raise CharRNNError(f"unknown config key {key!r}: {self._hint(key)}")

    def check_options(self) -> None:
        """Raise a CharRNNError for a key that only a group option sets (logger.mlflow.*)
        when that option is not chosen (on the command line, or by default)."""
        for key in self.set_by_option:
            chosen = {(group, option) for group, options in self.chosen.items()
                      for option in options}
            chosen |= {(g, o) for g, o in self.defaults.items() if g not in self.chosen}
            setters = self.option_keys[key]
            if not setters & chosen:
                group = next(iter(setters))[0]
                own = key.split(".")[1]  # logger.mlflow.* is logger=mlflow's, before many's
                options = sorted((o for _, o in setters), key=lambda o: (o != own, o))
                now = ",".join(self.chosen.get(group, [self.defaults.get(group, "null")]))
                raise CharRNNError(
                    f"{key} is set, but {group}={options[0]}, whose key it is, is not chosen "
                    f"({group}={now}). Add {group}={options[0]} to the command line (or a "
                    f"list: {group}=[{now},{options[0]}]), or leave {key} out.")

    def _hint(self, key: str) -> str:
        section, _, last = key.rpartition(".")
        siblings = sorted(k.rpartition(".")[2] for k in self.keys
                          if k.rpartition(".")[0] == section)
        near = [f"{section}.{k}" if section else k
                for k in difflib.get_close_matches(last, siblings, n=2)]
        near += [k for k in sorted(self.keys) if k.rpartition(".")[2] == last and k not in near]
        where, every = f"no file in {self.shown} sets it", "every key: docs/configuration.md"
        if near:
            return f"{where}. Did you mean {' or '.join(near[:3])}? ({every.capitalize()}.)"
        inside = f"the keys of {section} are" if section else "the top-level keys are"
        return f"{where}; {inside} {', '.join(siblings)} ({every})."


def multirun() -> bool:
    """Whether this process runs a job of a sweep (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def fail(err: Exception, run_dir: Path | None = None) -> None:
    """The one failure path of both entry points.

    A user's mistake (CharRNNError) is told in one paragraph, without a traceback; any other
    error with its traceback. In a sweep the job is recorded as failed (error.txt in its
    folder, listed in the summary) and the sweep goes on; alone, the process ends: exit status
    2 for a mistake, the error itself otherwise. `run_dir` is the folder the job writes into
    (None when it owns none, like a single generation).
    """
    in_sweep = multirun()
    if not isinstance(err, CharRNNError):
        if not in_sweep:
            raise err
        traceback.print_exception(err)
    if run_dir is not None:
        record_failure(run_dir, err, keep=in_sweep)
    print(f"\nerror: {err}", file=sys.stderr)
    if not in_sweep:
        sys.exit(2)


def refuse(err: CharRNNError) -> NoReturn:
    """A mistake found before anything ran: one paragraph, exit status 2."""
    print(f"\nerror: {err}", file=sys.stderr)
    sys.exit(2)


class OutputFolderCheck(Callback):
    """Refuses a run or sweep folder that cannot be written (a file in the way, no permission,
    a read-only or full disk) before Hydra creates it: one paragraph and exit 2 instead of
    Hydra's traceback, and nothing written. `run`: whether single runs write a folder
    (generate.py's do not)."""

    def __init__(self, run: bool = True) -> None:
        self.run = run

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if self.run:
            self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # A continued search writes into its study's folder, not into hydra.sweep.dir.
        study_dir = OmegaConf.select(config, "hydra.sweeper.study_dir", default=None)
        self._check(config, "hydra.sweep.dir" if study_dir is None else "hydra.sweeper.study_dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            folder = OmegaConf.select(config, key)  # the run folder's resolver creates it
        except Exception as err:  # a CharRNNError raised in the resolver, wrapped by OmegaConf
            cause = err
            while cause is not None and not isinstance(cause, CharRNNError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            refuse(cause)
        reason = unwritable_reason(Path(str(folder)))
        if reason is not None:
            refuse(folder_error(folder, key, reason))


class JobNames(Callback):
    """A sweep's job folders are named by the swept keys and their values only: a key fixed
    on the command line (the same in every job) is left out of `override_dirname`, so that
    `3_model.hidden_size-256` is not followed by every fixed override of the command."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        swept = set(OmegaConf.select(config, "hydra.sweeper.params", default=None) or {})
        fixed = set()
        for override in OverridesParser.create().parse_overrides(
                list(config.hydra.overrides.task)):
            (swept if override.is_sweep_override() else fixed).add(override.key_or_group)
        naming = config.hydra.job.config.override_dirname
        exclude = [*naming.exclude_keys, *sorted(fixed - swept - set(naming.exclude_keys))]
        # Each job's config is composed again from the sweep's Hydra overrides: one more there.
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]")


def newest_run(outputs: Path) -> Path | None:
    """The run folder under `outputs` whose best checkpoint was written last, or None."""
    best = max(outputs.glob(f"**/{CHECKPOINT_DIR}/{BEST}"), key=lambda p: p.stat().st_mtime,
               default=None)
    return None if best is None else best.parent.parent
