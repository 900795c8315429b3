"""`python generate.py mode=serve`: listening, refusing, stopping, and many users at once."""

import time

import pytest

from charrnn.bench.serving import ServerProcess, concurrent_streams
from charrnn.errors import CharRNNError
from charrnn.serve.server import bind, is_loopback


def test_a_taken_port_is_named_with_the_fix():
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(CharRNNError, match=f"port {port} on 127.0.0.1 is taken .* Set port to "
                           f"a free one, e.g. port={port + 1}, or port=0"):
            bind("127.0.0.1", port)
    finally:
        taken.close()
    with pytest.raises(CharRNNError, match="port must be 0..65535"):
        bind("127.0.0.1", 70000)
    with pytest.raises(CharRNNError, match="host=no-such-host.invalid is not an address here"):
        bind("no-such-host.invalid", 0)


def test_only_loopback_goes_without_a_warning():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


@pytest.mark.slow
def test_ctrl_c_and_a_taken_port(served):
    import subprocess
    import sys

    from charrnn.bench.measure import ROOT

    root, run = served
    server = ServerProcess(run, root).__enter__()
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    taken = subprocess.run([sys.executable, str(ROOT / "generate.py"), "mode=serve",
                            f"ckpt_path={run}", f"port={port}"], cwd=root, capture_output=True,
                           text=True, timeout=120)
    assert taken.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in taken.stderr
    assert "Traceback" not in taken.stderr
    status, stderr = server.stop()
    assert status == 130 and "server stopped." in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_many_users_then_users_who_leave_mid_stream(served):
    """32 streams at once all finish; then 32 clients hang up after 20 characters: the active
    count returns to 0 and memory stays flat."""
    root, run = served
    with ServerProcess(run, root, "max_length=3000") as server:
        concurrent_streams(server.url, 32, 500, prompt="to be")  # warm: every buffer it needs
        before = server.get("/api/status")["rss_mb"]
        done = concurrent_streams(server.url, 32, 500, prompt="to be")
        assert [r["chars"] for r in done] == [500] * 32
        for _ in range(3):
            left = concurrent_streams(server.url, 32, 3000, stop_after=20, prompt="to be")
            assert all(20 <= r["chars"] < 3000 for r in left)
        deadline = time.monotonic() + 10
        while server.get("/api/status")["streams"] and time.monotonic() < deadline:
            time.sleep(0.02)
        status = server.get("/api/status")
        assert status["streams"] == 0
        assert status["rss_mb"] - before < 20, (before, status)
