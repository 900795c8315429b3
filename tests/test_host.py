"""What the machine offers, asked portably: each question has an answer off Linux too."""

import os
import sys

from charrnn import host


def test_without_proc_the_cpu_counts_as_having_no_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "missing")
    assert host.cpu_has_bf16() is False
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2 avx512f amx_bf16\n")
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(host, "onednn_has_bf16", lambda: True)
    assert host.cpu_has_bf16() is True


def test_memory_in_use_is_read_on_linux_and_none_elsewhere(monkeypatch, tmp_path):
    (tmp_path / "status").write_text("Name:\tpython\nVmRSS:\t  204800 kB\n")
    monkeypatch.setattr(host, "PROC_STATUS", tmp_path / "status")
    assert host.rss_mb() == 200.0
    monkeypatch.setattr(host, "PROC_STATUS", tmp_path / "missing")  # macOS, Windows
    assert host.rss_mb() is None


def test_peak_memory_in_mib_on_linux_and_macos_and_none_on_windows(monkeypatch):
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    monkeypatch.setattr(resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(sys, "platform", "linux")
    linux = host.peak_rss_mb()
    assert linux == usage.ru_maxrss / 1024 > 0  # KiB on Linux
    monkeypatch.setattr(sys, "platform", "darwin")
    assert host.peak_rss_mb() == usage.ru_maxrss / 2**20  # bytes on macOS
    monkeypatch.setitem(sys.modules, "resource", None)  # Windows has no resource module
    assert host.peak_rss_mb() is None


def test_usable_cores_without_affinity(monkeypatch):
    assert host.usable_cores() >= 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert host.usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert host.usable_cores() == 1


def test_a_writable_folder_is_told_without_statvfs(monkeypatch, tmp_path):
    """Windows has no os.statvfs: the checks of output folders still answer."""
    import shutil

    from charrnn.errors import unwritable_reason

    monkeypatch.delattr(os, "statvfs")  # shutil.disk_usage asks Windows itself there
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(9, 8, 1))
    assert unwritable_reason(tmp_path / "new" / "folder") is None
    (tmp_path / "file").write_text("x")
    assert "is a file" in unwritable_reason(tmp_path / "file" / "below")
