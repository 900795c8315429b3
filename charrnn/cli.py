"""What train.py and generate.py share around Hydra: reading the command line, failing, and
finding runs (no Lightning import: generate.py starts fast)."""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from charrnn.checkpoints import BEST, CHECKPOINT_DIR, record_failure
from charrnn.errors import CharRNNError

OVERRIDE = re.compile(r"(?P<prefix>\+{0,2}|~)(?P<key>[\w.@/-]+)=(?P<value>.*)", re.DOTALL)


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra string: it parses back to exactly `text`.

    Hydra keeps backslashes as they are, except before a quote (or the closing quote), where
    each must be doubled and the quote escaped.
    """
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def prepare_overrides(args: list[str], text_keys: tuple[str, ...]) -> list[str]:
    """The command-line arguments for Hydra, with text values quoted, every override checked.

    A prompt is text, in any script: an unquoted value of a key in `text_keys` is quoted for
    Hydra (whose grammar has no room for, say, Cyrillic or a comma in an unquoted value).
    Any other override Hydra cannot parse ends here with the quoted form to use, exit 2.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    prepared, parser = [], OverridesParser.create()
    for arg in args:
        match = OVERRIDE.fullmatch(arg)
        if arg.startswith("-") or match is None:
            prepared.append(arg)  # a flag (-m, --cfg job, ...) or a flag's value
            continue
        value = match["value"]
        if match["key"] in text_keys and not value.startswith(("'", '"')):
            arg = f"{match['prefix']}{match['key']}={hydra_quote(value)}"
        try:
            parser.parse_override(arg)
        except HydraException as err:  # the parser's errors, a lexer's among them
            reason = str(err).strip().splitlines()[0]
            fail(CharRNNError(
                f"the override {arg!r} cannot be read ({reason}). Quote its value for Hydra "
                f"inside quotes for the shell: '{match['prefix']}{match['key']}="
                f"\"{value}\"' (see https://hydra.cc/docs/advanced/override_grammar/basic/)."
            ))
        prepared.append(arg)
    return prepared


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


def newest_run(outputs: Path) -> Path | None:
    """The run folder under `outputs` whose best checkpoint was written last, or None."""
    best = max(outputs.glob(f"**/{CHECKPOINT_DIR}/{BEST}"), key=lambda p: p.stat().st_mtime,
               default=None)
    return None if best is None else best.parent.parent
