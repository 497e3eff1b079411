"""The table: the default view fits 100 columns, --wide keeps every column, and a cell a suite
cannot fill says why once, in a footnote."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from sockety.benchmark._cases import CASES
from sockety.benchmark._output import add_ratios, render_table
from sockety.benchmark._runner import error_row, na_row
from sockety.benchmark._suites import load_suites

pytestmark = pytest.mark.timeout(30)

META = {
    "clients": 1,
    "connections": 1,
    "concurrency": 64,
    "server_workers": 1,
    "duration": 3.0,
    "warmup": 1.0,
    "rounds": 3,
    "loop": "uvloop",
    "sockety_core": "compiled (mypyc)",
    "pinning": "server workers pinned to CPU 0, client processes to CPU 1",
}


def ok_row(suite: str, case: str, unit: str) -> dict[str, Any]:
    """A full result with the widest figures a real run prints."""
    row: dict[str, Any] = {
        "suite": suite,
        "case": case,
        "unit": unit,
        "status": "ok",
        "success_pct": 100.0,
        "rate": 123_456.0 if unit == "req" else 4_360.0,
        "latency_us": {"p50": 999.0, "p90": 402_700.0, "p99": 1_030_000.0, "max": 1_030_000.0},
        "client_cpu": {"usr_pct": 100.0, "sys_pct": 95.0, "us_per_op": 45_000.0},
        "server_cpu": {"usr_pct": 91.0, "sys_pct": 7.0, "us_per_op": 63_421.1},
        "rounds": [1_000_000.0, 1_100_000.0, 1_200_000.0],
    }
    if case == "fairness":
        row["fairness"] = {"p99_ratio": 633.0, "unloaded_us": {"p99": 142.0}}
    return row


def all_rows() -> list[dict[str, Any]]:
    suites, _ = load_suites()
    rows = []
    for suite in suites:
        for case in CASES:
            if case.name not in suite.cases:
                rows.append(na_row(suite, case))
            elif (suite.name, case.name) == ("http2", "stream"):
                rows.append(error_row(suite, case, "timeout after 60 s"))
            else:
                rows.append(ok_row(suite.name, case.name, case.unit))
    return add_ratios(rows, {suite.name: i for i, suite in enumerate(suites)})


def render(wide: bool) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None)  # wider than any table
    render_table(all_rows(), META, console, wide=wide)
    return out.getvalue().splitlines()


def test_the_default_view_fits_100_columns() -> None:
    lines = render(wide=False)
    assert max(map(len, lines)) <= 100, "\n".join(lines)  # table, footnotes and caption
    header = next(line for line in lines if "p50" in line)
    for column in ("rate", "p50", "p99", "srv µs/op", "vs raw"):
        assert column in header
    assert "p90" not in header and "note" not in header


def test_unsupported_cells_say_why_once_in_a_footnote() -> None:
    lines = render(wide=False)
    text = "\n".join(lines)
    reason = "http1 has no noreply case: HTTP/1.1 answers every request (no fire-and-forget)"
    footnotes = [line for line in lines if line.endswith(reason) or reason in line]
    assert len(footnotes) == 1, text
    marker = footnotes[0].split()[0]
    assert marker[0] in "¹²³⁴⁵⁶⁷⁸⁹"
    row = next(line for line in lines if line.lstrip().startswith("noreply") and "http1" in line)
    assert f"n/a{marker}" in row
    # Sockety over TLS inherits the reason of Sockety over TCP: one footnote each.
    assert sum("has no ping case" in line for line in lines) == 4  # sockety-tcp/tls, http1, grpc
    assert any("timeout after 60 s" in line for line in lines)  # errors say why too


def test_wide_view_keeps_every_column() -> None:
    lines = render(wide=True)
    header = "\n".join(lines[:6])
    for column in ("p90", "max", "cli CPU", "srv CPU", "note"):
        assert column in header
    assert max(map(len, lines)) > 150
