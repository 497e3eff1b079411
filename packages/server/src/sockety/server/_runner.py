"""One serving process: the server, its metrics, signals and logs (a lone ``sockety-server``
or one worker under the supervisor)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from typing import Any

from sockety.core import SocketyError
from sockety.core.aio import Connection, Handler, loop_factory

from ._server import Server

__all__ = ["log_closed", "run_worker", "tls_context"]

logger = logging.getLogger("sockety.server")

#: Close reasons that are business as usual (logged at debug); the others at info.
_ORDINARY = frozenset({"closed", "closed_by_peer"})


def log_closed(connection: Connection) -> None:
    """Logs why a connection closed: abnormal reasons at INFO, ordinary ones at DEBUG."""
    reason = connection.close_reason
    kind = reason.kind if reason is not None else "closed"
    logger.log(
        logging.DEBUG if kind in _ORDINARY else logging.INFO,
        "connection from %s closed (%s): %s",
        _address(connection.remote_address),
        kind,
        reason.reason if reason is not None else "closed",
    )


def tls_context(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def run_worker(args: argparse.Namespace, handler: Handler, limits: dict[str, int]) -> int:
    use_uvloop = {"auto": None, "asyncio": False, "uvloop": True}[args.loop]
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(_serve(args, handler, limits))


async def _serve(args: argparse.Namespace, handler: Handler, limits: dict[str, int]) -> int:
    loop = asyncio.get_running_loop()
    loop_name = type(loop).__module__.split(".")[0]
    in_pool = args.worker_id is not None
    try:
        context = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    except (OSError, ssl.SSLError) as error:
        files = ", ".join(f for f in (args.tls_cert, args.tls_key, args.tls_ca) if f)
        logger.error("could not load the TLS files (%s): %s", files, error)
        return 2
    cut_off = 0  # connections closed with work unfinished when the grace period ended

    def disconnected(connection: Connection) -> None:
        nonlocal cut_off
        log_closed(connection)
        reason = connection.close_reason
        if reason is not None and reason.kind == "grace_timeout":
            cut_off += 1

    options: dict[str, Any] = {
        "ssl": context,
        "max_connections": args.max_connections,
        "max_memory": args.max_memory,
        "on_disconnect": disconnected,
        "idle_timeout": args.idle_timeout,
        # One deadline for every wait on the peer: the TLS handshake and connection header
        # (from the accept), each header, and writes it leaves blocked.
        "open_timeout": args.timeout,
        "header_timeout": args.timeout,
        "write_timeout": args.timeout,
        "heartbeat_interval": args.heartbeat,
        "close_timeout": args.grace,
        **limits,
    }
    metrics: Any = None
    if args.metrics_port is not None:
        from ._metrics import ServerMetrics  # noqa: PLC0415 - prometheus only when asked

        metrics = ServerMetrics(loop_name=loop_name)
        options["observer"] = metrics
    if args.cluster:
        from ._cli import make_cluster  # noqa: PLC0415 - sockety-cluster only when asked

        options["cluster"] = make_cluster(args.cluster, metrics.registry if metrics else None)
    server = Server(handler, **options)
    try:
        await server.start(args.host, args.port, reuse_port=in_pool)
    except OSError as error:
        logger.error("could not listen on %s:%s: %s", args.host, args.port, error)
        return 1
    except SocketyError as error:  # the cluster link (--cluster) could not start
        logger.error("%s", error)
        return 1

    background: list[asyncio.Task[None]] = []
    metrics_http: asyncio.Server | None = None
    if metrics is not None:
        if in_pool:  # the supervisor serves every worker's metrics from PROMETHEUS_MULTIPROC_DIR
            background.append(loop.create_task(metrics.sync_every(1.0)))
        else:
            from ._metrics import serve_metrics  # noqa: PLC0415

            host = args.metrics_host or args.host
            try:
                metrics_http = await serve_metrics(
                    metrics.registry, host, args.metrics_port, healthy=lambda: server.is_serving
                )
            except OSError as error:
                logger.error("could not serve metrics on %s:%s: %s", host, args.metrics_port, error)
                await server.close(0)
                return 1
            port = metrics_http.sockets[0].getsockname()[1]
            logger.info("metrics on http://%s/metrics", _address((host, port)))

    stop = asyncio.Event()
    signals: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        signals.append(signum.name)
        if len(signals) == 1:
            logger.info(
                "%s: shutting down gracefully (Go Away; in-flight work has %g s)",
                signum.name,
                args.grace,
            )
            stop.set()
        else:
            logger.warning("%s again: exiting now", signum.name)
            logging.shutdown()
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if args.parent_fd is not None:  # the supervisor died: drain and go
        _watch_parent(loop, args.parent_fd, stop)

    logger.info(
        "ready: serving %s on %s (pid %d, %s, %s)",
        args.app,
        ", ".join(_address(address) for address in server.addresses),
        os.getpid(),
        loop_name,
        "TLS" if context else "TCP",
    )
    if args.ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, b"r")
            os.close(args.ready_fd)

    serving = loop.create_task(server.serve_forever())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    logger.info("draining %d connection(s)", len(server.connections))
    await server.close(args.grace)
    stopping.cancel()
    await asyncio.gather(serving, stopping, return_exceptions=True)
    if cut_off:
        logger.warning("%d connection(s) still busy after %g s were closed", cut_off, args.grace)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if metrics_http is not None:
        metrics_http.close()
        await metrics_http.wait_closed()
    logger.info("stopped")
    return 0


def _watch_parent(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    def readable() -> None:
        with contextlib.suppress(OSError):
            if os.read(fd, 1):
                return
        loop.remove_reader(fd)
        if not stop.is_set():
            logger.warning("the supervisor is gone: shutting down")
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use sockety-server or python -m sockety.server")
