"""Rendering results: the rich table on stdout and the JSON document."""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sockety.core import COMPILED

from ._cases import CASES

__all__ = [
    "add_ratios",
    "median_rounds",
    "metadata",
    "compact_table",
    "render_table",
    "write_json",
    "write_markdown",
]

_CASE_ORDER = {case.name: i for i, case in enumerate(CASES)}


def median_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per suite and case out of the rows of several rounds: the round with the median
    figure (the worse middle one for an even count), every round's figure kept in ``rounds``.
    The figure is the rate, or in the fairness case the loaded p99 over the unloaded one (lower
    is better). A round that failed wins over the ones that did not: a failure is not noise."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["suite"], row["case"]), []).append(row)
    picked = []
    for runs in by_key.values():
        failed = [row for row in runs if row["status"] not in ("ok", "n/a")]
        if failed or len(runs) == 1 or runs[0]["status"] == "n/a":
            picked.append(failed[0] if failed else runs[0])
            continue
        ratios: list[Any] = [(row.get("fairness") or {}).get("p99_ratio") for row in runs]
        fairness = None not in ratios
        figures = [float(ratio) for ratio in ratios] if fairness else [row["rate"] for row in runs]
        ranked = sorted(range(len(runs)), key=figures.__getitem__, reverse=fairness)
        middle = runs[ranked[(len(runs) - 1) // 2]]
        picked.append({**middle, "rounds": figures})
    return picked


def add_ratios(rows: list[dict[str, Any]], suite_order: dict[str, int]) -> list[dict[str, Any]]:
    """Set ``vs_raw`` (rate / the raw ceiling's rate for the same case) and sort the rows."""
    raw = {r["case"]: r["rate"] for r in rows if r["suite"] == "raw" and r["status"] == "ok"}
    for row in rows:
        base = raw.get(row["case"])
        ok = row["status"] == "ok" and base
        row["vs_raw"] = round(row["rate"] / base, 4) if ok and base else None
    return sorted(
        rows, key=lambda r: (_CASE_ORDER.get(r["case"], 99), suite_order.get(r["suite"], 99))
    )


def _lat(us: float | None) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.1f} ms"
    return f"{us / 1e6:.2f} s"


def _cpu(cpu: dict[str, Any] | None) -> tuple[str, str]:
    if not cpu or cpu.get("usr_pct") is None:
        return "-", "-"
    per_op = cpu.get("us_per_op")
    return f"{cpu['usr_pct']:.0f}/{cpu['sys_pct']:.0f}", "-" if per_op is None else f"{per_op:.1f}"


def _note(row: dict[str, Any], *, with_rounds: bool = True) -> str:
    parts = []
    fair = row.get("fairness")
    if fair and fair.get("p99_ratio") is not None and fair.get("unloaded_us"):
        parts.append(f"p99 {fair['p99_ratio']:.1f}x unloaded ({_lat(fair['unloaded_us']['p99'])})")
    noreply = row.get("noreply")
    if noreply:
        parts.append(f"server counted {noreply['received_by_server']}/{noreply['sent']}")
    if row.get("note") and row["status"] != "n/a":
        parts.append(str(row["note"]))
    rounds = row.get("rounds") if with_rounds else None
    if rounds and fair:
        parts.append(f"median of {len(rounds)}: {min(rounds):.1f}x-{max(rounds):.1f}x")
    elif rounds:
        parts.append(f"median of {len(rounds)}: {min(rounds):,.0f}-{max(rounds):,.0f}")
    text = "; ".join(parts)
    return text if len(text) <= 70 else text[:69] + "…"


HEADERS = (
    "case",
    "suite",
    "ok %",
    "rate",
    "p50",
    "p90",
    "p99",
    "max",
    "cli CPU usr/sys",
    "srv CPU usr/sys",
    "cli µs/op",
    "srv µs/op",
    "vs raw",
    "note",
)


def cells(row: dict[str, Any]) -> list[str]:
    """The table cells of one result row, as text."""
    if row["status"] != "ok":
        label = row["status"] if row["status"] == "n/a" else row["status"].upper()
        return [row["case"], row["suite"], label, *["-"] * 10, _note(row)]
    lat = row.get("latency_us") or {}
    rate = f"{row['rate']:,.0f} req/s" if row["unit"] == "req" else f"{row['rate']:,.0f} MB/s"
    cli_pct, cli_op = _cpu(row.get("client_cpu"))
    srv_pct, srv_op = _cpu(row.get("server_cpu"))
    ratio = row.get("vs_raw")
    success = row["success_pct"]
    return [
        row["case"],
        row["suite"],
        f"{success:.1f}" if success < 100 else "100",
        rate,
        _lat(lat.get("p50")),
        _lat(lat.get("p90")),
        _lat(lat.get("p99")),
        _lat(lat.get("max")),
        cli_pct,
        srv_pct,
        cli_op,
        srv_op,
        "-" if ratio is None else f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x",
        _note(row),
    ]


def caption(meta: dict[str, Any]) -> str:
    return (
        f"{meta['clients']} client process(es) x {meta['connections']} connection(s) x "
        f"{meta['concurrency']} in flight, {meta['server_workers']} server worker(s), "
        f"{meta['duration']}s per case after {meta['warmup']}s warmup, "
        f"{_rounds(meta.get('rounds', 1))}loop={meta['loop']}, "
        f"sockety-core {meta.get('sockety_core', '?')}; "
        f"{meta['pinning']}. CPU usr/sys in % of one core; µs/op = CPU µs per request "
        "(per MB for MB/s cases)."
    )


def _rounds(count: int) -> str:
    return f"median of {count} rounds, " if count > 1 else ""


def write_markdown(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The same table as GitHub-flavoured markdown (for READMEs and reports)."""
    lines = ["| " + " | ".join(HEADERS) + " |"]
    lines.append("|" + "|".join("---" if i < 2 or i == 13 else "--:" for i in range(14)) + "|")
    for row in rows:
        text = [c.replace("|", "\\|") for c in cells(row)]
        lines.append("| " + " | ".join(text) + " |")
    lines.append("")
    lines.append(caption(meta))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _sections(rows: list[dict[str, Any]], table: Table) -> Iterator[dict[str, Any]]:
    """The rows, with a section line in ``table`` between cases."""
    previous = None
    for row in rows:
        if previous is not None and row["case"] != previous:
            table.add_section()
        previous = row["case"]
        yield row


#: The default view: what fits 100 columns (--wide shows every column, as write_markdown).
COMPACT_HEADERS = ("case", "suite", "rate", "p50", "p99", "srv µs/op", "vs raw")
_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def compact_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[Table, list[str]]:
    """The compact table and its footnotes: why a cell is empty (a case the suite cannot
    run, an error) and the notes, each said once and marked where it applies."""
    notes: dict[str, int] = {}

    def mark(text: str) -> str:
        number = notes.setdefault(text, len(notes) + 1)
        return str(number).translate(_SUPERSCRIPTS)

    table = Table(
        title="sockety-bench",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    for i, header in enumerate(COMPACT_HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right", no_wrap=True)
    for row in _sections(rows, table):
        full = cells(row)
        # The rounds' range stays in --wide and the JSON: here the caption says "median of".
        note = (
            _note(row, with_rounds=False) if row["status"] != "n/a" else str(row.get("note") or "")
        )
        marker = mark(note) if note else ""
        if row["status"] != "ok":
            style = "dim" if row["status"] == "n/a" else "red"
            label = Text(full[2] + marker, style=style)
            table.add_row(full[0], full[1], label, "-", "-", "-", "-")
            continue
        style = "" if row["success_pct"] >= 100 else "red"
        rate = full[3] if row["success_pct"] >= 100 else f"{full[3]} ({full[2]}% ok)"
        table.add_row(
            full[0], full[1], Text(rate + marker, style=style), full[4], full[6], full[11], full[12]
        )
    footnotes = [f"{str(n).translate(_SUPERSCRIPTS)} {text}" for text, n in notes.items()]
    return table, footnotes


def render_table(
    rows: list[dict[str, Any]], meta: dict[str, Any], console: Console, *, wide: bool = False
) -> None:
    """The results on ``console``: the compact view (100 columns), or every column."""
    if not wide:
        table, footnotes = compact_table(rows, meta)
        console.print(table)
        width = min(console.width, 100)
        for line in [*footnotes, caption(meta)]:
            console.print(textwrap.fill(line, width, subsequent_indent="  "), highlight=False)
        return
    table = Table(title="sockety-bench", caption=caption(meta), header_style="bold")
    for i, header in enumerate(HEADERS):
        table.add_column(
            header.replace(" usr", "\nusr").replace(" µs", "\nµs"),
            justify="left" if i < 2 or i == 13 else "right",
        )
    for row in _sections(rows, table):
        text = cells(row)
        if row["status"] != "ok":
            style = "dim" if row["status"] == "n/a" else "red"
            table.add_row(
                *text[:2], Text(text[2], style=style), *text[3:13], Text(text[13], style=style)
            )
        else:
            style = "" if row["success_pct"] >= 100 else "red"
            table.add_row(*text[:2], Text(text[2], style=style), *text[3:])
    console.print(table)


def metadata(opts: Any, pinning: str) -> dict[str, Any]:
    return {
        "duration": opts.duration,
        "warmup": opts.warmup,
        "server_workers": opts.server_workers,
        "clients": opts.clients,
        "concurrency": opts.concurrency,
        "connections": opts.connections,
        "loop": opts.loop,
        "sockety_core": "compiled (mypyc)" if COMPILED else "pure Python",
        "remote": opts.remote,
        "pinning": pinning,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "rounds": opts.rounds,
        "argv": sys.argv[1:],
    }


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    document = {"meta": meta, "results": rows}
    data = json.dumps(document, indent=2, ensure_ascii=False)
    if str(path) == "-":
        sys.stdout.write(data + "\n")
    else:
        path.write_text(data + "\n", encoding="utf-8")
