"""logger=wandb offline (no account, no network): the run's offline files read back."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.conftest import TINY, run_script

pytest.importorskip("wandb", reason="logger=wandb needs the trackers extra: "
                                   'pip install -e ".[trackers]"')
pytestmark = pytest.mark.slow


def read_records(path: Path) -> list:
    """The records of an offline run's .wandb file: a 7-byte header, then LevelDB's log format
    (32 KiB blocks of chunks: crc, length, type; a record spans chunks of type 2, 3, 4)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    records, parts = [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += room
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def offline_run(run: Path) -> dict:
    """History keys, config and summary of the run's offline run folders, all of them."""
    found = {"history": set(), "config": {}, "summary": {}, "ids": set(), "runs": 0}
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        found["runs"] += 1
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found["ids"].add(record.run.run_id)
            items = {"history": lambda r: r.history.item, "config": lambda r: r.config.update,
                     "summary": lambda r: r.summary.update}.get(kind)
            for item in items(record) if items else ():
                key = item.key or "/".join(item.nested_key)
                if kind == "history":
                    found["history"].add(key)
                else:
                    found[kind][key] = json.loads(item.value_json)
    return found


def test_an_offline_run_holds_everything_and_a_resume_continues_it(corpus, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key: offline by default
    home = tmp_path / "home"  # W&B's own cache, config and logs: not the user's
    monkeypatch.setenv("HOME", str(home))
    for name in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(home / f"wandb-{name.lower()}"))
    run = tmp_path / "run"
    args = [f"data.path={corpus}", *TINY, "logger=[tensorboard,wandb]",
            "vanishing.every_n_steps=5", "vanishing.image_every_n_steps=5",
            "trainer.log_every_n_steps=2", f"hydra.run.dir={run}"]
    first = run_script("train.py", *args, "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_script("train.py", f"ckpt_path={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    found = offline_run(run)
    record = json.loads((run / "trackers.json").read_text())["wandb"]
    assert record["offline"] and found["ids"] == {record["id"]}  # one W&B run, continued
    for name in ("train/loss", "train/grad_norm", "train/lr", "train/chars_per_s", "val/ppl",
                 "grad_distance_input/k=1", "test/ppl", "samples/T=0.5/_type",
                 "grad_distance/curve/_type"):
        assert name in found["history"], name
    assert found["config"]["model.hidden_size"] == 16
    assert found["config"]["run_dir"] == str(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert found["summary"]["test_ppl"] == pytest.approx(metrics["test_ppl"])
    saved = list(run.glob("wandb/offline-run-*/files/metrics.json"))
    assert saved and json.loads(saved[-1].read_text())["epochs_run"] == 2
