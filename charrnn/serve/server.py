"""`python generate.py mode=serve`: the page on a local web server until Ctrl-C."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from pathlib import Path

import torch

from charrnn.errors import CharRNNError, check_int
from charrnn.serve.models import Models, describe


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or a CharRNNError that names a
    taken port or an address this machine does not have."""
    check_int("port", port, "conf/generate/generate.yaml", minimum=0)
    if port > 65535:
        raise CharRNNError(f"port must be 0..65535 (0: any free port), got {port}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise CharRNNError(f"host={host} is not an address here ({err.strerror}). Use "
                           "host=127.0.0.1 (this machine only) or an address of it.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise CharRNNError(f"port {port} on {host} is taken (another program listens on "
                               f"it). Set port to a free one, e.g. port={port + 1}, or port=0 "
                               "for any free port.") from None
        raise CharRNNError(f"cannot listen on {host}:{port} ({err.strerror}). Set host and "
                           "port to an address of this machine.") from None
    sock.listen(128)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(checkpoint: Path, run_id: str, host: str, port: int, max_length: int,
          max_streams: int, outputs: Path, device: str = "cpu") -> None:
    """Serve the page over `checkpoint` (and the runs under `outputs`) until Ctrl-C."""
    import uvicorn

    from charrnn.serve.app import create_app

    check_int("max_length", max_length, "conf/generate/generate.yaml")
    check_int("max_streams", max_streams, "conf/generate/generate.yaml")
    sock = bind(host, port)
    # One core computes the steps (small matrix products: more threads only cost), the other
    # serves the page.
    torch.set_num_threads(1)
    models = Models(describe(checkpoint, run_id), outputs, max_streams, device)
    models.get(None)  # the served checkpoint loads now: a bad one fails before the URL
    shown_host, shown_port = sock.getsockname()[:2]
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    if not is_loopback(host):
        print(f"warning: host={host} makes the page reachable from other machines: anyone who "
              f"can reach port {shown_port} can generate text on this machine's CPU.",
              file=sys.stderr)
    print(f"serving {run_id} at http://{shown_host}:{shown_port}/  (Ctrl-C stops)", flush=True)
    app = create_app(models, max_length)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it handled once it has stopped
        pass
    finally:
        models.close()
        sock.close()
    print("\nserver stopped.", file=sys.stderr)
    sys.exit(130)  # the shell's status for Ctrl-C
