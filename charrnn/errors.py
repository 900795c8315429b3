"""The one exception type for mistakes a user can fix (bad config, bad files), and the checks of
settings that raise it."""

import difflib
import errno
import inspect
import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path


class CharRNNError(Exception):
    """A problem with the user's input: the message names it and says how to fix it.

    Entry points catch it, print the message without a traceback and exit with status 2.
    """


def _where(key: str, where: str) -> str:
    return f" Set it on the command line (e.g. `{key}=...`) or in {where}." if where else ""


def check_int(key: str, value: object, where: str = "", minimum: int = 1,
              note: str = "") -> None:
    """Raise a CharRNNError unless `value` is an int >= `minimum` (bools are not counts).

    `where`: the config file or folder that sets `key`; `note`: what a special value means."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise CharRNNError(f"{key} must be {kind}{note}, got {value!r}.{_where(key, where)}")


def check_number(key: str, value: object, where: str = "", *, above: float | None = None,
                 at_least: float | None = None, below: float | None = None,
                 note: str = "") -> None:
    """Raise a CharRNNError unless `value` is a finite number in the range the bounds give."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below)
    if not ok:
        if below is None:
            bounds = f"> {above:g}" if above is not None else f">= {at_least:g}"
        else:
            bounds = f"in ({above:g}, {below:g})" if above is not None else (
                f"in [{at_least:g}, {below:g})")
        raise CharRNNError(
            f"{key} must be a number {bounds}{note}, got {value!r}.{_where(key, where)}"
        )


def check_gpu(setting: str, instead: str) -> None:
    """Raise a CharRNNError unless torch sees a CUDA GPU; `setting` asked for one, `instead`
    is the setting that runs without."""
    import torch

    if torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        build, fix = "a CPU build", ("install the CUDA build of torch that matches the GPU's "
                                    "driver (pytorch.org) in place of the CPU build")
    else:
        build, fix = f"built for CUDA {torch.version.cuda}", (
            "check that `nvidia-smi` lists a GPU and that CUDA_VISIBLE_DEVICES does not hide it")
    raise CharRNNError(
        f"{setting} asks for a GPU, and torch {torch.__version__} ({build}) sees none. Use "
        f"{instead}; to run on an NVIDIA GPU, {fix}."
    )


def check_keys(section: str, target: Callable, keys: Iterable[str],
               taken: tuple[str, ...] = ()) -> None:
    """Raise a CharRNNError for a key of the config section `section` that `target`, the class
    it configures, does not take (`taken`: its arguments this project passes itself). Such a
    key can only have been added with `+section.key=...`."""
    allowed = [name for name in inspect.signature(target).parameters
               if name not in ("self", *taken)]
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        name = f"{target.__module__.split('.')[0]}'s {target.__qualname__}"
        listed = (f"its arguments: {', '.join(allowed)}" if len(allowed) <= 15
                  else f"its arguments are in the documentation of {name}")
        near = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" Did you mean {section}.{near[0]}?" if near else ""
        raise CharRNNError(
            f"{section}.{unknown[0]} is not an argument of {name}, which {section}.* configures "
            f"({listed}).{hint} Remove the key from the command line (+{section}.{unknown[0]}"
            "=...) or from conf/train/."
        )


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (which may not exist yet: it would be created in
    its nearest existing parent), or None when they can."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"a file is in the way: {existing} is a file, not a folder"
    # statvfs is POSIX only (not on Windows, where os.access tells a read-only folder too)
    if hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    if shutil.disk_usage(existing).free == 0:
        return f"the disk holding {existing} is full"
    return None


def os_error_reason(err: OSError) -> str:
    """What an OSError from creating or writing a file means, in a few words."""
    reasons = {errno.ENOTDIR: "a file is in the way (a folder on the path is a file)",
               errno.EEXIST: "a file of that name is in the way",
               errno.EACCES: "no permission", errno.EPERM: "no permission",
               errno.ENOSPC: "the disk is full", errno.EROFS: "a read-only file system",
               errno.EISDIR: "it is a folder"}
    return reasons.get(err.errno, err.strerror or type(err).__name__)


def folder_error(folder: Path | str, key: str, reason: str) -> CharRNNError:
    """The refusal of a folder a run or sweep cannot write: which, why, and the key to change."""
    return CharRNNError(
        f"cannot write into {folder}: {reason}. Nothing was written. Set {key} to a folder you "
        f"can write (e.g. `{key}=/tmp/charrnn-run`), or run from another folder."
    )
