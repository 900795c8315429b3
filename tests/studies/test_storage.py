"""Where a study lives: SQLite, a journal file, a database server; and its password."""

import os
import sys

import pytest

from charrnn.errors import CharRNNError
from charrnn.studies.storage import (
    PASSWORD_ENV,
    kind,
    masked,
    open_storage,
    recorded,
    resolve,
    take_password,
    write_record,
)


def test_the_three_storages(tmp_path):
    assert resolve(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/study.db"
    assert resolve("journal", tmp_path) == f"journal:{tmp_path.resolve()}/study.journal"
    url = "postgresql+psycopg://ann@db.example.org:5432/studies"
    assert resolve(url, tmp_path) == url
    assert [kind(resolve(s, tmp_path)) for s in (None, "journal", url)] == [
        "sqlite", "journal", "server"]
    with pytest.raises(CharRNNError, match="must be unset .*, journal .* or a database URL"):
        resolve("jornal", tmp_path)
    with pytest.raises(CharRNNError, match=f"holds a password .*set {PASSWORD_ENV}") as err:
        resolve("postgresql://ann:hunter2@db/studies", tmp_path)
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


def test_a_password_on_the_command_line_goes_into_the_environment(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    arg = take_password("hydra.sweeper.storage=postgresql+psycopg://ann:hunter2@db:5432/s")
    assert arg == "hydra.sweeper.storage=postgresql+psycopg://ann@db:5432/s"
    assert os.environ[PASSWORD_ENV] == "hunter2"
    for other in ("hydra.sweeper.storage=journal", "model.hidden_size=3",
                  "hydra.sweeper.storage=postgresql://ann@db/s"):
        assert take_password(other) == other
    assert masked("postgresql://ann:hunter2@db/s") == "postgresql://ann:***@db/s"


def test_a_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(CharRNNError, match=r"needs the database driver psycopg, which is not "
                       r"installed: pip install -e '\.\[postgres\]'"):
        open_storage("postgresql+psycopg://ann@127.0.0.1:1/s")


def test_an_unwritable_journal_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(CharRNNError, match=f"cannot write the study's journal {tmp_path}/afile/"
                       "x/study.journal"):
        open_storage(f"journal:{tmp_path}/afile/x/study.journal")


def test_a_search_folder_records_its_storage(tmp_path):
    assert recorded(tmp_path) is None
    (tmp_path / "study.db").write_text("")  # a folder from before storage.json
    assert recorded(tmp_path) == (resolve(None, tmp_path), None)
    write_record(tmp_path, "postgresql+psycopg://ann@db/s", "rnn")
    assert recorded(tmp_path) == ("postgresql+psycopg://ann@db/s", "rnn")
