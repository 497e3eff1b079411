"""``sockety-chat serve --workers N --cluster URL``: N chat server processes sharing one port
(SO_REUSEPORT), each its own member of the cluster, so they are one room. The parent holds the
port (bound, not listening) so that port 0 means the same free port for all, forwards SIGINT and
SIGTERM to the workers and exits when they have (with the worst status)."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from types import FrameType

__all__ = ["serve_workers"]

_WORKER = "import sys; from sockety.chat._cli import main; sys.exit(main())"


def worker_args(args: argparse.Namespace, port: int) -> list[str]:
    argv = ["serve", "--host", args.host, "--port", str(port), "--reuse-port"]
    argv += ["--max-file-size", str(args.max_file_size), "--history", str(args.history)]
    argv += ["--stall", str(args.stall), "--replicas", str(args.replicas)]
    for url in args.cluster:
        argv += ["--cluster", url]
    if args.tls_cert:
        argv += ["--tls-cert", str(args.tls_cert)]
    if args.tls_key:
        argv += ["--tls-key", str(args.tls_key)]
    if args.verbose:
        argv.append("-v")
    return argv


def serve_workers(args: argparse.Namespace) -> int:
    if not args.cluster:
        print("sockety-chat: --workers needs --cluster (else each is a room)", file=sys.stderr)
        return 2
    if not hasattr(socket, "SO_REUSEPORT"):
        print("sockety-chat: --workers needs SO_REUSEPORT (Linux, BSD, macOS)", file=sys.stderr)
        return 2
    holder = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((args.host, args.port))
    except OSError as error:
        print(f"sockety-chat: cannot bind {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, *worker_args(args, port)])
        for _ in range(args.workers)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        statuses = [worker.wait() for worker in workers]
    finally:
        holder.close()
    return max(statuses, key=abs)
