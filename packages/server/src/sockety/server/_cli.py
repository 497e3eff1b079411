"""``sockety-server MODULE:ATTR``: serves a router (or any handler) from the user's module, the
way uvicorn serves an app. One process by default; ``--workers N`` runs N processes sharing the
port through SO_REUSEPORT under a supervisor (see ``_workers``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from sockety.core.aio import Handler
from sockety.core.cli import add_version, existing_file, port, positive_float, positive_int

__all__ = ["main"]

logger = logging.getLogger("sockety.server")

#: Connection options an operator may set with --limit NAME=VALUE (integers).
LIMITS = (
    "channels",
    "max_action_size",
    "max_data_size",
    "max_files",
    "max_header_size",
    "max_buffered_bytes",
    "max_receive_buffer",
    "max_queued_messages",
    "max_handlers",
    "max_send_backlog",
    "write_buffer_limit",
)


class UsageError(Exception):
    """A problem with the command line or the app: one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockety-server",
        description="Serve a Sockety router (or handler) defined in your module.",
        epilog="Example: sockety-server myapp.service:router --port 9000 --workers 4 "
        "--metrics-port 9100",
    )
    add_version(parser, "sockety-server")
    parser.add_argument(
        "app", metavar="MODULE:ATTR", help="where the router or handler is, e.g. myapp:router"
    )
    parser.add_argument(
        "--factory",
        action="store_true",
        help="ATTR is a function returning the router or handler (called once per worker)",
    )
    parser.add_argument(
        "--app-dir",
        default=".",
        help="directory to import MODULE from (default: the current directory)",
    )
    where = parser.add_argument_group("listening")
    where.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    where.add_argument("--port", type=port, default=9000, help="port (default: 9000; 0: any)")
    where.add_argument(
        "--tls-cert",
        type=existing_file,
        metavar="PEM",
        help="serve TLS with this certificate chain",
    )
    where.add_argument(
        "--tls-key", type=existing_file, metavar="PEM", help="the certificate's private key"
    )
    where.add_argument(
        "--tls-ca",
        type=existing_file,
        metavar="PEM",
        help="require client certificates signed by these CAs",
    )
    where.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes sharing the port with SO_REUSEPORT (default: 1, no supervisor)",
    )
    conns = parser.add_argument_group("connections")
    conns.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="deadline for the TLS handshake and the peer's connection header (from the "
        "accept), for each header it starts, and for writes it leaves blocked by reading "
        "nothing (default: 10)",
    )
    conns.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=120.0,
        metavar="SECONDS",
        help="close a peer that sent nothing, not even a heartbeat, for this long (default: "
        "120, well over the 45 s heartbeat of the Node.js reference)",
    )
    conns.add_argument(
        "--heartbeat",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="send a heartbeat after writing nothing for this long (default: 10)",
    )
    conns.add_argument(
        "--grace",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight work may finish (default: 30)",
    )
    conns.add_argument(
        "--max-connections",
        type=positive_int,
        default=1024,
        metavar="N",
        help="refuse connections beyond this many, before any TLS handshake (per worker; "
        "default: 1024)",
    )
    conns.add_argument(
        "--max-memory",
        type=positive_int,
        metavar="BYTES",
        help="what all connections together may hold for their peers (per worker; default: "
        "no shared limit, each connection has its own max_buffered_bytes)",
    )
    conns.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a connection limit, repeatable; NAME in: {', '.join(LIMITS)}",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any port)",
    )
    ops.add_argument(
        "--metrics-host", metavar="HOST", help="address for the metrics (default: --host)"
    )
    ops.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="default: info",
    )
    ops.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop (default: uvloop when installed)",
    )
    ops.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="NATS_URL",
        help="join the servers using this NATS (repeatable for a NATS cluster), e.g. "
        "nats://127.0.0.1:4222; needs the sockety-cluster package",
    )
    # Set by the supervisor for its workers.
    parser.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    return parser


def parse_limits(items: Sequence[str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in LIMITS:
            raise UsageError(f"--limit {item!r}: expected NAME=VALUE with NAME in {LIMITS}")
        try:
            limits[name] = int(value.replace("_", ""), 0)
        except ValueError:
            raise UsageError(f"--limit {item!r}: {value!r} is not an integer") from None
    return limits


def load_app(spec: str, *, factory: bool = False, app_dir: str = ".") -> Handler:
    """Imports ``module:attr`` (attr may be dotted) and returns the handler it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"app {spec!r} must be MODULE:ATTR, e.g. myapp:router")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise UsageError(f"could not import module {module_name!r}: {error}") from None
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        target = target()
    if not callable(target):
        raise UsageError(f"{spec} is a {type(target).__name__}, not a router or handler")
    handler: Handler = target
    return handler


def cluster_class() -> Any:
    """``sockety.cluster.Cluster``, imported only for ``--cluster``: the server does not depend
    on sockety-cluster (nats-py and the nats-server binary)."""
    try:
        from sockety.cluster import Cluster  # noqa: PLC0415
    except ImportError as error:
        raise UsageError(
            f"--cluster needs the sockety-cluster package (pip install sockety-cluster): {error}"
        ) from None
    return Cluster


def make_cluster(urls: Sequence[str], registry: Any = None) -> Any:
    """The cluster link for ``--cluster URL...``, its metrics on ``registry``."""
    return cluster_class()(list(urls), registry=registry)


def configure_logging(level: str, worker: int | None) -> None:
    who = f"worker {worker} " if worker is not None else ""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)s [{who}pid %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    configure_logging(args.log_level, args.worker_id)
    try:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1")
        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        if args.tls_ca and not args.tls_cert:
            raise UsageError("--tls-ca needs --tls-cert and --tls-key")
        limits = parse_limits(args.limit)
        if args.cluster:
            cluster_class()  # fails here, with exit status 2, if not installed
        if args.workers > 1:
            from ._workers import supervise  # noqa: PLC0415 - only the supervisor needs it

            return supervise(args, args_list)
        from ._runner import run_worker  # noqa: PLC0415 - keeps --help fast

        handler = load_app(args.app, factory=args.factory, app_dir=args.app_dir)
        return run_worker(args, handler, limits)
    except UsageError as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:  # before the loop took over the signals
        return 130
