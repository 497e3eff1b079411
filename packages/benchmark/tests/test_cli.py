"""sockety-bench end to end: real processes on loopback, tiny durations, bounded in time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-m", "sockety.benchmark"]


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Children start with SIGINT as a terminal's Ctrl-C finds it. A shell starts background
    jobs with SIGINT ignored, Python keeps that and children inherit it, and these tests may
    run under one (a CI runner, ``cmd &``); a handler of ours is reset to the default at exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


TINY = ["-t", "0.3", "-w", "0.1"]


def run_cli(*args: str, timeout: float = 45) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}-{time.time_ns()}.json"
    try:
        proc = subprocess.run(
            [*CLI, *args, "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        document = json.loads(out.read_text()) if out.exists() else None
    finally:
        out.unlink(missing_ok=True)
    return proc, document


def assert_sane(row: dict[str, Any]) -> None:
    where = f"{row['suite']} {row['case']}: {row.get('note')}"
    assert row["status"] == "ok", where
    assert row["success_pct"] == 100.0, where
    assert row["rate"] > 0, where
    assert row["window_s"] > 0.2, where
    lat = row["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], where
    assert row["client_cpu"]["usr_pct"] is not None, where
    assert row["client_cpu"]["us_per_op"] > 0, where


def test_raw_regular_and_noreply_json() -> None:
    proc, doc = run_cli(*TINY, "-f", "raw", "-f", "regular,noreply")
    assert proc.returncode == 0, proc.stderr
    assert doc is not None
    rows = {row["case"]: row for row in doc["results"]}
    assert set(rows) == {"regular", "noreply"}
    for row in rows.values():
        assert_sane(row)
        assert row["suite"] == "raw"
        assert row["vs_raw"] == 1.0
        assert row["server_cpu"]["us_per_op"] > 0
    noreply = rows["noreply"]["noreply"]
    # Fire-and-forget is counted by the server, and every message sent arrived.
    assert noreply["sent"] > 0
    assert noreply["received_by_server"] == noreply["sent"]
    assert doc["meta"]["concurrency"] == 64
    assert "regular" in proc.stdout  # the table went to stdout


def test_rounds_show_the_median_round() -> None:
    proc, doc = run_cli(*TINY, "-r", "3", "-f", "raw,sockety-tcp", "-f", "short")
    assert proc.returncode == 0, proc.stderr
    assert doc is not None and doc["meta"]["rounds"] == 3
    rows = {row["suite"]: row for row in doc["results"]}
    assert set(rows) == {"raw", "sockety-tcp"}
    for row in rows.values():
        assert_sane(row)
        assert len(row["rounds"]) == 3 and all(rate > 0 for rate in row["rounds"])
        assert row["rate"] == sorted(row["rounds"])[1]
    assert rows["sockety-tcp"]["vs_raw"] == round(
        rows["sockety-tcp"]["rate"] / rows["raw"]["rate"], 4
    )
    assert "median of 3 rounds" in " ".join(proc.stdout.split())  # the caption, however wrapped


def test_every_suite_regular_and_na_rows() -> None:
    proc, doc = run_cli(*TINY, "-f", "regular,ping")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert doc is not None
    rows = {(r["suite"], r["case"]): r for r in doc["results"]}
    suites = {
        "raw",
        "tls-ceiling",
        "sockety-tcp",
        "sockety-tls",
        "http1",
        "http2",
        "grpc",
        "websockets",
    }
    assert {s for s, _ in rows} == suites
    for suite in suites:
        row = rows[(suite, "regular")]
        assert_sane(row)
        assert row["vs_raw"] is not None and row["vs_raw"] > 0
    # HTTP/1.1 and gRPC have no protocol ping: reported, not silently dropped.
    assert rows[("http1", "ping")]["status"] == "n/a"
    assert rows[("grpc", "ping")]["status"] == "n/a"
    # Sockety's Heartbeat is one-way: there is no ping round trip to time.
    assert rows[("sockety-tcp", "ping")]["status"] == "n/a"
    assert_sane(rows[("http2", "ping")])
    assert_sane(rows[("websockets", "ping")])


def test_no_match_is_an_error() -> None:
    proc = subprocess.run(
        [*CLI, "-f", "no-such-suite"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    assert "no suite/case matches" in proc.stderr


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return children


def _wait_for_children(proc: subprocess.Popen[str], count: int, deadline: float) -> list[int]:
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the CLI exited early"
        children = _descendants(proc.pid)
        if len(children) >= count:
            return [c.pid for c in children]
        time.sleep(0.05)
    raise AssertionError("benchmark processes did not start")


def _gone(pids: list[int], deadline: float) -> list[int]:
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [
            p
            for p in alive
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if alive:
            time.sleep(0.05)
    return alive


@pytest.fixture
def popen() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        for child in _descendants(proc.pid):
            child.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


@pytest.mark.usefixtures("sigint_default")
def test_sigint_leaves_no_child_process(popen: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen(
        [*CLI, "-t", "30", "-w", "0.1", "-f", "raw", "-f", "short"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    popen.append(proc)
    # A server worker and a client process (plus spawn's resource tracker) exist once the
    # case runs; the measured window lasts 30 s, so the interrupt lands mid-case.
    children = _wait_for_children(proc, 2, time.monotonic() + 20)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert _gone(children, time.monotonic() + 5) == []


@pytest.mark.usefixtures("sigint_default")
def test_server_only_and_remote(popen: list[subprocess.Popen[str]]) -> None:
    server = subprocess.Popen(
        [*CLI, "--server-only", "raw", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    popen.append(server)
    assert server.stdout is not None
    port = None
    for line in server.stdout:  # blocks until the server printed its port
        if line.startswith("PORT="):
            port = int(line.strip().split("=", 1)[1])
            break
    assert port, "no PORT= line"
    children = _descendants(server.pid)
    assert children, "the server worker runs in its own process"
    proc, doc = run_cli(*TINY, "--remote", "127.0.0.1", "-p", str(port), "-f", "raw", "-f", "short")
    assert proc.returncode == 0, proc.stderr
    assert doc is not None
    (row,) = doc["results"]
    assert_sane(row)
    assert row["server_cpu"] is None  # not measurable from the client side
    server.send_signal(signal.SIGINT)
    server.wait(15)
    assert server.returncode == 130
    assert _gone([c.pid for c in children], time.monotonic() + 5) == []


def _listening(pid: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections())
    except psutil.Error:
        return False


def test_crashed_server_is_reported_and_replaced(popen: list[subprocess.Popen[str]]) -> None:
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-crash-{os.getpid()}.json"
    proc = subprocess.Popen(
        [*CLI, "-t", "2", "-w", "0.1", "-f", "raw", "-f", "short,regular", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    popen.append(proc)
    deadline = time.monotonic() + 20
    server = None
    while server is None:
        children = _wait_for_children(proc, 2, deadline)
        server = next((pid for pid in children if _listening(pid)), None)
        assert time.monotonic() < deadline, "no listening server process"
    os.kill(server, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=40)
    try:
        doc = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    rows = {r["case"]: r for r in doc["results"]}
    short = rows["short"]
    assert short["status"] != "ok" or short["success_pct"] < 100, short
    assert "server" in (short["note"] or ""), short
    # The next case gets a fresh server and measures normally.
    assert_sane(rows["regular"])
    assert proc.returncode in (0, 1), stderr
    assert _gone([server, *[c.pid for c in _descendants(proc.pid)]], time.monotonic() + 5) == []


def test_sockety_suites_run_every_case_they_claim() -> None:
    cases = "noreply,short,regular,data-1m,file-mem,file-disk,nagle-1m,stream,fairness"
    proc, doc = run_cli(*TINY, "-f", "sockety-tcp,sockety-tls", "-f", cases, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert doc is not None
    rows = {(r["suite"], r["case"]): r for r in doc["results"]}
    for suite in ("sockety-tcp", "sockety-tls"):
        for case in cases.split(","):
            assert_sane(rows[(suite, case)])
        noreply = rows[(suite, "noreply")]["noreply"]
        assert noreply["received_by_server"] == noreply["sent"] > 0


def test_tls_ceiling_and_the_paced_client() -> None:
    """The TLS ceiling carries every case the raw one does, over TLS; the paced (Nagle on)
    client of ``nagle-1m`` completes its uploads against both ceilings."""
    proc, doc = run_cli(*TINY, "-f", "raw,tls-ceiling", "-f", "regular,data-1m,nagle-1m")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert doc is not None
    rows = {(r["suite"], r["case"]): r for r in doc["results"]}
    assert set(rows) == {
        (suite, case)
        for suite in ("raw", "tls-ceiling")
        for case in ("regular", "data-1m", "nagle-1m")
    }
    for row in rows.values():
        assert_sane(row)
    assert "1 MiB body, one at a time" in rows[("raw", "nagle-1m")]["title"]
