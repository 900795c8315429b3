"""Where a search's study lives (`hydra.sweeper.storage`), and opening it.

    unset      study.db: SQLite in the sweep folder, one search on one machine
    journal    study.journal: Optuna's journal file in the sweep folder, for a shared file
               system (NFS): workers on several machines append to it
    a URL      a database server every worker reaches, e.g.
               postgresql+psycopg://user@db.example.org:5432/studies

A password never goes into a URL that is passed to a job, written or printed: it comes from
CHARRNN_STORAGE_PASSWORD, or, for PostgreSQL, libpq's own PGPASSWORD or ~/.pgpass. A password
typed into the URL on the command line is moved into CHARRNN_STORAGE_PASSWORD before Hydra
sees the command line (`take_password`), so Hydra's files never hold it either.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn.errors import CharRNNError

if TYPE_CHECKING:  # optuna only where a study is opened: train.py imports take_password
    import optuna

SQLITE_FILE = "study.db"
JOURNAL_FILE = "study.journal"
RECORD_FILE = "storage.json"  # in every search's folder: its storage and study, for summaries
PASSWORD_ENV = "CHARRNN_STORAGE_PASSWORD"
CONNECT_TIMEOUT_S = 5
EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres"}  # driver module -> the extra with it


def resolve(setting: Any, sweep_dir: Path) -> str:
    """The storage as a search's jobs get it (`search.storage`): sqlite:///<file>,
    journal:<file> (both in the sweep folder), or the server's URL without a password."""
    if setting is None:
        return f"sqlite:///{sweep_dir.resolve() / SQLITE_FILE}"
    if str(setting) == "journal":
        return f"journal:{sweep_dir.resolve() / JOURNAL_FILE}"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(str(setting))
    except ArgumentError:
        raise CharRNNError(
            f"hydra.sweeper.storage must be unset (SQLite in the sweep folder), journal (a "
            f"journal file there, for a shared file system) or a database URL such as "
            f"postgresql+psycopg://user@host:5432/db; got {masked(str(setting))}."
        ) from None
    if url.password is not None:  # from a config file: it was not taken off the command line
        raise CharRNNError(
            f"hydra.sweeper.storage holds a password ({masked(str(setting))}): remove it from "
            f"the config file and set {PASSWORD_ENV} (or PGPASSWORD) instead."
        )
    return url.render_as_string(hide_password=False)


def kind(spec: str) -> str:
    """sqlite, journal or server."""
    if spec.startswith("journal:"):
        return "journal"
    return "sqlite" if spec.startswith("sqlite:") else "server"


def masked(url: str) -> str:
    """A URL fit to print: any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***" if "@" in url else url


def take_password(arg: str) -> str:
    """`hydra.sweeper.storage=<URL with a password>` -> the URL without it; the password goes
    into CHARRNN_STORAGE_PASSWORD, which this process's jobs inherit. Other arguments pass."""
    key, _, value = arg.partition("=")
    if key.lstrip("+") != "hydra.sweeper.storage" or "://" not in value:
        return arg
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value.strip("'\""))
    except ArgumentError:
        return arg  # resolve() names the mistake
    if url.password is None:
        return arg
    os.environ[PASSWORD_ENV] = str(url.password)
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                      url.query)
    return f"{key}={bare.render_as_string(hide_password=False)}"


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """The study's storage, reached now: a CharRNNError names what is wrong (a server that does
    not answer, a refused password, a driver that is not installed, a folder not writable),
    never the password."""
    import optuna

    if kind(spec) == "sqlite":
        # Jobs running side by side write to one SQLite file: wait for its lock, do not fail.
        return optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 120}})
    if kind(spec) == "journal":
        path = Path(spec.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(path)))
        except OSError as err:
            raise CharRNNError(f"cannot write the study's journal {path} ({err.strerror}): set "
                               "hydra.sweep.dir to a folder every worker can write.") from None
    return _open_server(spec)


def _open_server(spec: str) -> optuna.storages.RDBStorage:
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import (
        IntegrityError,
        NoSuchModuleError,
        OperationalError,
        ProgrammingError,
        SQLAlchemyError,
    )

    url = make_url(spec)
    where = f"{url.host or 'localhost'}:{url.port or 'the default port'}"
    if os.environ.get(PASSWORD_ENV):
        url = url.set(password=os.environ[PASSWORD_ENV])
    connect = {"connect_timeout": CONNECT_TIMEOUT_S} if url.get_backend_name() in (
        "postgresql", "mysql") else {}
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url.render_as_string(hide_password=False),
                                                  engine_kwargs={"connect_args": connect})
            except (IntegrityError, ProgrammingError):
                if attempt == 4:  # workers starting together race to create Optuna's tables
                    raise
                time.sleep(0.5 + attempt)
    except (ImportError, NoSuchModuleError) as err:  # Optuna rewraps the driver's ImportError
        cause = err
        while cause is not None and not getattr(cause, "name", None):
            cause = cause.__cause__ or cause.__context__
        name = getattr(cause, "name", None) or url.get_driver_name()
        extra = EXTRAS.get(name)
        fix = f"pip install -e '.[{extra}]'" if extra else f"install the {name} driver"
        raise CharRNNError(f"hydra.sweeper.storage={masked(spec)} needs the database driver "
                           f"{name}, which is not installed: {fix}.") from None
    except OperationalError as err:
        detail = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        detail = detail.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()  # libpq's
        if "password" in detail or "authentication" in detail:
            raise CharRNNError(
                f"the database at {where} refused user {url.username or '(none)'}: {detail}. "
                f"Set the password in {PASSWORD_ENV} (or PGPASSWORD, or ~/.pgpass)."
            ) from None
        raise CharRNNError(
            f"cannot reach the study's database at {where} ({detail}). Check that the server "
            f"runs and that hydra.sweeper.storage={masked(spec)} names its host and port."
        ) from None
    except SQLAlchemyError as err:
        raise CharRNNError(f"the study's database at {where} failed: "
                           f"{type(err).__name__}.") from None


def write_record(sweep_dir: Path, spec: str, study_name: str) -> None:
    """storage.json: which study a search folder's trials belong to (no password in it)."""
    (sweep_dir / RECORD_FILE).write_text(json.dumps({"storage": spec, "study": study_name},
                                                    indent=2) + "\n")


def recorded(sweep_dir: Path) -> tuple[str, str | None] | None:
    """(storage, study name) of a search folder, or None if it is not one. A folder from
    before storage.json holds study.db alone (its one study)."""
    if (sweep_dir / RECORD_FILE).is_file():
        record = json.loads((sweep_dir / RECORD_FILE).read_text())
        return record["storage"], record["study"]
    if (sweep_dir / SQLITE_FILE).is_file():
        return resolve(None, sweep_dir), None
    return None
