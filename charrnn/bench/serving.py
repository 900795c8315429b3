"""--only serve: the generation page's server under 1, 8 and 32 concurrent streams on loopback.

The server runs as a user starts it (`python generate.py mode=serve port=0`, a process of its
own) over the default model's size with untrained weights; clients in this process read its
server-sent events. Per concurrency: total characters per second over all streams, and the
time from sending a request to its first generated character (p50, p99). Beside them, in the
same run, generate.py's own rates for 1 and 64 samples (charrnn.bench.generation).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from charrnn.bench.generation import write_random_checkpoint
from charrnn.bench.measure import ROOT
from charrnn.generation.loading import load_model
from charrnn.generation.sampling import sample_text

CONCURRENCY = (1, 8, 32)
TIMEOUT_S = 120  # any one request; the whole group is bounded by its counts


class ServerProcess:
    """`python generate.py mode=serve` on a free loopback port, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, ckpt: Path, cwd: Path, *overrides: str) -> None:
        self.command = [sys.executable, str(ROOT / "generate.py"), "mode=serve",
                        f"ckpt_path={ckpt}", "host=127.0.0.1", "port=0", *overrides]
        self.cwd = cwd

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(self.command, cwd=self.cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # "serving <run> at http://127.0.0.1:PORT/ ..."
        if " at http://" not in line:
            self.process.kill()
            raise RuntimeError(f"the server did not start: {line}{self.process.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split()[0]
        return self

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and what it wrote to stderr."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGINT)
            except ValueError:  # Windows sends no SIGINT to another process
                self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err

    def __exit__(self, *exc) -> None:
        self.stop()

    def get(self, path: str) -> dict:
        address = urlparse(self.url)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT_S)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()


def read_stream(url: str, settings: dict, stop_after: int | None = None) -> dict[str, float]:
    """One client: POST /api/generate, read its events; `stop_after`: hang up after that many
    characters. Seconds to the first character, characters read, seconds in all."""
    address = urlparse(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT_S)
    start = time.perf_counter()
    first, chars = None, 0
    try:
        conn.request("POST", "/api/generate", json.dumps(settings),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {response.read()[:300]!r}")
        while True:
            line = response.readline()
            if not line or line.startswith(b"event: end"):
                break
            if line.startswith(b"data: "):
                chars += sum(isinstance(item, list) for item in json.loads(line[6:]))
                if first is None and chars:
                    first = time.perf_counter() - start
                if stop_after is not None and chars >= stop_after:
                    break
    finally:
        conn.close()
    return {"first_s": first, "chars": chars, "seconds": time.perf_counter() - start}


def concurrent_streams(url: str, n: int, length: int, stop_after: int | None = None,
                       seed: int = 0, prompt: str = "ROMEO:") -> list[dict[str, float]]:
    """`n` clients started together, each on a thread of its own."""
    results: list[dict[str, float] | Exception] = [None] * n

    def client(i: int) -> None:
        try:
            results[i] = read_stream(url, {"prompt": prompt, "length": length,
                                           "temperature": 1.0, "seed": seed + i}, stop_after)
        except Exception as err:  # reported below, with the others' results
            results[i] = err

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    failed = [r for r in results if not isinstance(r, dict)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} streams failed: {failed[0]!r}")
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_serve(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    vocab = "".join(chr(c) for c in range(32, 32 + 65))  # 65 characters, like Tiny Shakespeare
    ckpt = write_random_checkpoint(tmp / "serve.ckpt", vocab, args.hidden_size)
    length = max(args.gen_length // 4, 20)
    results: dict[str, float] = {}
    model, vocab_ = load_model(ckpt)  # generate.py's rates, in the same run
    for batch in (1, 64):
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        sample_text(model, vocab_, "ROMEO:", length, 1.0, num_samples=batch, generator=generator)
        results[f"cli_{batch}_sample_chars_per_s"] = batch * length / (time.perf_counter() - start)
    with ServerProcess(ckpt, tmp, "max_streams=64", f"max_length={length}") as server:
        concurrent_streams(server.url, 2, 20)  # warm-up
        for n in CONCURRENCY:
            rounds = [concurrent_streams(server.url, n, length) for _ in range(args.repeats)]
            walls = [max(r["seconds"] for r in streams) for streams in rounds]
            chars = sum(r["chars"] for r in rounds[0])
            results[f"serve_{n}_streams_chars_per_s"] = chars / statistics.median(walls)
            firsts = [r["first_s"] * 1000 for streams in rounds for r in streams]
            results[f"serve_{n}_streams_first_char_p50_ms"] = percentile(firsts, 0.5)
            results[f"serve_{n}_streams_first_char_p99_ms"] = percentile(firsts, 0.99)
        results["serve_32_over_1_stream"] = (results["serve_32_streams_chars_per_s"]
                                             / results["serve_1_streams_chars_per_s"])
    return results
