"""Merging client samples into one result row."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from ._cases import NOREPLY, Case
from ._suite import CaseSamples

__all__ = ["CpuWindow", "merge", "percentiles"]

_QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def percentiles(samples_ns: Sequence[int]) -> dict[str, float] | None:
    """Exact nearest-rank p50/p90/p99 and max, in microseconds, over all samples."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    n = len(ordered)
    out = {name: ordered[max(0, math.ceil(q * n) - 1)] / 1000 for name, q in _QUANTILES}
    out["max"] = ordered[-1] / 1000
    return out


class CpuWindow:
    """usr/sys CPU seconds used by a set of processes between two snapshots."""

    def __init__(self, usr: float = 0.0, sys: float = 0.0, wall: float = 0.0) -> None:
        self.usr = usr
        self.sys = sys
        self.wall = wall

    def as_json(self, ops: float) -> dict[str, float | None]:
        busy = self.usr + self.sys
        return {
            "usr_pct": round(100 * self.usr / self.wall, 1) if self.wall else None,
            "sys_pct": round(100 * self.sys / self.wall, 1) if self.wall else None,
            "us_per_op": round(1e6 * busy / ops, 2) if ops else None,
        }


def _join(arrays: Iterable[array[int]]) -> array[int]:
    out: array[int] = array("q")
    for a in arrays:
        out.extend(a)
    return out


def merge(
    suite: str,
    case: Case,
    samples: list[CaseSamples],
    client_cpu: CpuWindow | None,
    server_cpu: CpuWindow | None,
) -> dict[str, Any]:
    """One JSON result row from every client's samples and the CPU windows."""
    errors = [s.error for s in samples if s.error]
    ok = sum(s.ok for s in samples)
    failed = sum(s.errors for s in samples)
    windows = [s.window for s in samples if s.window > 0]
    window = sum(windows) / len(windows) if windows else 0.0
    nbytes = sum(s.nbytes for s in samples)
    rps = ok / window if window else 0.0
    mbps = nbytes / window / 1e6 if window else 0.0
    latencies = _join(s.latencies for s in samples)
    row: dict[str, Any] = {
        "suite": suite,
        "case": case.name,
        "title": case.title,
        "unit": case.unit,
        "status": "error" if errors and not (ok or nbytes) else "ok",
        "requests": ok,
        "errors": failed,
        "window_s": round(window, 4),
        "rps": round(rps, 1),
        "mbps": round(mbps, 2) if case.unit == "MB" else None,
        "rate": round(mbps if case.unit == "MB" else rps, 2),
        "latency_us": percentiles(latencies),
        "note": "; ".join(dict.fromkeys(errors)) or None,
    }
    attempts = ok + failed
    if attempts:
        row["success_pct"] = round(100 * ok / attempts, 2)
    else:  # a stream still running at the end of the window moved bytes without failing
        row["success_pct"] = 100.0 if nbytes else 0.0
    if case is NOREPLY:
        sent = sum(s.sent for s in samples)
        received = sum(s.received for s in samples)
        row["noreply"] = {"sent": sent, "received_by_server": received}
        if sent or failed:
            row["success_pct"] = round(100 * min(received, sent) / (sent + failed), 2)
    if case.bulk:
        baseline = percentiles(_join(s.baseline for s in samples))
        loaded = row["latency_us"]
        ratio = None
        if baseline and loaded and baseline["p99"]:
            ratio = round(loaded["p99"] / baseline["p99"], 2)
        row["fairness"] = {"unloaded_us": baseline, "loaded_us": loaded, "p99_ratio": ratio}
    if not ok and not nbytes and not errors:
        first = next((s.first_error for s in samples if s.first_error), None)
        row["status"] = "error"
        row["note"] = first or "no request completed"
    elif failed:
        first = next((s.first_error for s in samples if s.first_error), None)
        if first:
            row["note"] = "; ".join(x for x in (row["note"], f"first error: {first}") if x)
    ops = nbytes / 1e6 if case.unit == "MB" else ok
    row["client_cpu"] = client_cpu.as_json(ops) if client_cpu else None
    row["server_cpu"] = server_cpu.as_json(ops) if server_cpu else None
    return row
