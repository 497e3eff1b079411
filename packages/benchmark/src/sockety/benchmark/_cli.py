"""``sockety-bench``: the command line."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

from sockety.core.cli import add_version, port, positive_float, positive_int

from ._cases import CASES, Case
from ._net import HAVE_UVLOOP
from ._output import (
    add_ratios,
    median_rounds,
    metadata,
    render_table,
    write_json,
    write_markdown,
)
from ._runner import BenchmarkError, Options, Progress, SuiteProcesses, plan_cores, run_benchmark
from ._suite import Suite
from ._suites import load_suites

__all__ = ["build_parser", "main"]

QUICK_DURATION = 0.5


def non_negative_float(text: str) -> float:
    """Seconds, 0 allowed (no warmup)."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass  # positive_float says why
    return positive_float(text)


QUICK_WARMUP = 0.2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sockety-bench",
        description=(
            "Loopback RPC benchmark: Sockety against HTTP/1.1, HTTP/2, gRPC, WebSockets and a "
            "raw-Python ceiling. Every suite runs its server in its own process(es) and the "
            "load in separate client process(es)."
        ),
    )
    add_version(p, "sockety-benchmark")
    p.add_argument(
        "-t",
        "--time",
        type=positive_float,
        default=None,
        metavar="SEC",
        help="measured duration per case (default 3, --quick 0.5)",
    )
    p.add_argument(
        "-w",
        "--warmup",
        type=non_negative_float,
        default=None,
        metavar="SEC",
        help="warmup per case before measuring (default 1, --quick 0.2)",
    )
    p.add_argument(
        "-s",
        "--server-workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="server worker processes sharing the port (default 1)",
    )
    p.add_argument(
        "-c",
        "--clients",
        type=positive_int,
        default=1,
        metavar="N",
        help="client processes (default 1)",
    )
    p.add_argument(
        "-cc",
        "--concurrency",
        type=positive_int,
        default=64,
        metavar="N",
        help="requests in flight per client process (default 64)",
    )
    p.add_argument(
        "-cn",
        "--connections",
        type=positive_int,
        default=1,
        metavar="N",
        help="connections per client process (default 1)",
    )
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="WORD",
        help="only run 'suite case' pairs containing WORD; repeat to require every "
        "word, separate alternatives with commas (-f raw,grpc -f regular)",
    )
    p.add_argument(
        "-e",
        "--exclude",
        action="append",
        default=[],
        metavar="WORD",
        help="skip 'suite case' pairs containing WORD (repeatable)",
    )
    p.add_argument(
        "-r",
        "--rounds",
        type=positive_int,
        default=1,
        metavar="N",
        help="run the whole selection N times, one round after another, and show for each "
        "suite and case the round with the median rate (fairness: p99 ratio) (default 1)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short cases so that the whole default matrix takes about a minute",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="show every column (about 175 characters wide): CPU %% and µs/op of both sides, "
        "p90 and max, success rate and notes; the default view fits 100 columns",
    )
    p.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write machine-readable results to PATH ('-' for stdout)",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help="also write the table as GitHub markdown to PATH",
    )
    p.add_argument(
        "--server-only",
        nargs="?",
        const="",
        default=None,
        metavar="SUITE",
        help="only start the server of SUITE (or of the one suite selected by -f), "
        "print its port and serve until Ctrl-C",
    )
    p.add_argument(
        "--remote",
        metavar="HOST",
        help="only run clients, against a --server-only server on HOST (-p PORT)",
    )
    p.add_argument(
        "-p",
        "--port",
        type=port,
        default=0,
        help="port to listen on (--server-only) or to connect to (--remote)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address servers listen on")
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of every process (default uvloop)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin server and client processes to separate CPU cores",
    )
    p.add_argument("--list", action="store_true", help="list suites and the cases they support")
    return p


def select(
    suites: list[Suite], filters: Sequence[str], excludes: Sequence[str]
) -> list[tuple[Suite, list[Case]]]:
    """The (suite, cases) pairs whose 'suite case' text passes the -f and -e words."""
    plan: list[tuple[Suite, list[Case]]] = []
    for suite in suites:
        chosen = []
        for case in CASES:
            text = f"{suite.name} {case.name}".lower()
            if not all(any(a.lower() in text for a in f.split(",") if a) for f in filters):
                continue
            if any(e.lower() in text for e in excludes):
                continue
            chosen.append(case)
        if chosen:
            plan.append((suite, chosen))
    return plan


class _BarProgress(Progress):
    def __init__(self, bar: RichProgress, total: int) -> None:
        self.bar = bar
        self.overall: TaskID = bar.add_task("cases", total=total)
        self.current: TaskID | None = None
        self.seconds = 0.0

    def case_started(self, suite: str, case: str, seconds: float) -> None:
        self.seconds = seconds
        label = f"{suite} {case}"
        self.bar.update(self.overall, description=label)
        if self.current is None:
            self.current = self.bar.add_task("  this case", total=max(seconds, 0.001))
        self.bar.reset(self.current, total=max(seconds, 0.001))

    def tick(self, elapsed: float) -> None:
        if self.current is not None:
            self.bar.update(self.current, completed=min(elapsed, self.seconds))

    def case_done(self) -> None:
        self.bar.advance(self.overall)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    if args.json is not None and str(args.json) == "-":
        out = Console(stderr=True, width=None if sys.stderr.isatty() else 200)  # JSON owns stdout
    else:
        out = Console(width=None if sys.stdout.isatty() else 200)
    opts = Options(
        duration=args.time if args.time is not None else QUICK_DURATION if args.quick else 3.0,
        warmup=args.warmup if args.warmup is not None else QUICK_WARMUP if args.quick else 1.0,
        server_workers=max(1, args.server_workers),
        clients=max(1, args.clients),
        concurrency=max(1, args.concurrency),
        connections=max(1, args.connections),
        loop=args.loop,
        host=args.host,
        remote=args.remote,
        port=args.port,
        pin=not args.no_pin,
        rounds=max(1, args.rounds),
    )
    if opts.loop == "uvloop" and not HAVE_UVLOOP:
        err.print("uvloop is not installed; using --loop asyncio")
        opts.loop = "asyncio"
    suites, problems = load_suites()
    if args.list:
        return _list(out, suites, problems)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.server_only is not None:
        return _server_only(args, opts, suites, out, err)
    plan = select(suites, args.filter, args.exclude)
    if args.remote:
        if len(plan) != 1:
            err.print("--remote needs -f words that select exactly one suite")
            return 2
        if not opts.port:
            err.print("--remote needs -p PORT")
            return 2
    if not plan:
        err.print("no suite/case matches the -f/-e filters (see --list)")
        return 2
    n_servers = 0 if opts.remote else opts.server_workers
    pinning = plan_cores(n_servers, opts.clients, opts.pin)[2]
    meta = metadata(opts, pinning)
    total = sum(len(cases) for _, cases in plan)
    rounds = f" x {opts.rounds} rounds" if opts.rounds > 1 else ""
    err.print(f"sockety-bench: {total} case(s){rounds}, {pinning}")
    rows: list[dict[str, Any]] = []
    interrupted = False
    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    try:
        with bar:
            progress = _BarProgress(bar, total * opts.rounds)
            for _ in range(opts.rounds):
                run_benchmark(opts, plan, progress, on_row=rows.append)
    except KeyboardInterrupt:
        interrupted = True
        err.print("interrupted: all benchmark processes stopped")
    order = {suite.name: i for i, suite in enumerate(suites)}
    rows = add_ratios(median_rounds(rows), order)
    meta["interrupted"] = interrupted
    if rows:
        render_table(rows, meta, out, wide=args.wide)
    if args.json:
        write_json(args.json, meta, rows)
    if args.markdown:
        write_markdown(args.markdown, meta, rows)
    if interrupted:
        return 130
    return 1 if any(r["status"] in ("error", "timeout") for r in rows) else 0


def _list(out: Console, suites: list[Suite], problems: list[str]) -> int:
    for suite in suites:
        supported = " ".join(c.name if c.name in suite.cases else "-" for c in CASES)
        out.print(f"[bold]{suite.name}[/]: {suite.description}\n    {supported}")
    for problem in problems:
        out.print(f"[red]not loaded[/] {problem}")
    out.print("cases: " + ", ".join(f"{c.name} ({c.title})" for c in CASES))
    return 0


def _server_only(
    args: argparse.Namespace, opts: Options, suites: list[Suite], out: Console, err: Console
) -> int:
    if args.server_only:
        chosen = [s for s in suites if s.name == args.server_only]
    else:
        chosen = [s for s, _ in select(suites, args.filter, args.exclude)]
    if len(chosen) != 1:
        names = ", ".join(s.name for s in suites)
        err.print(f"--server-only needs exactly one suite (one of: {names})")
        return 2
    suite = chosen[0]
    opts.remote = None
    with tempfile.TemporaryDirectory(prefix="sockety-bench-") as tmp:
        procs = SuiteProcesses(suite, opts, Path(tmp))
        try:
            suite.prepare(Path(tmp))
            port = procs.start_servers()
            out.print(
                f"{suite.name} server listening on {opts.host} port {port} "
                f"({opts.server_workers} worker(s); {procs.pinning}); Ctrl-C to stop"
            )
            print(f"PORT={port}", flush=True)
            while True:
                ready = wait([s.process.sentinel for s in procs.servers], 1.0)
                if ready:
                    err.print("a server worker exited")
                    return 1
        except BenchmarkError as exc:
            err.print(f"server failed: {exc}")
            return 1
        except KeyboardInterrupt:
            err.print("stopping")
            return 130
        finally:
            procs.close()
            time.sleep(0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
