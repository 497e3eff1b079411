"""The benchmark cases: what is measured, independent of the protocol under test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

MIB: Final = 1024 * 1024

#: The ~50 byte msgpack object sent by the ``regular`` and ``noreply`` cases.
REGULAR_REQUEST: Final[dict[str, Any]] = {
    "method": "user.get",
    "id": 1234567,
    "params": {"name": "alice", "limit": 20, "active": True},
}
#: What a server answers to a ``regular`` request (also ~50 bytes packed).
REGULAR_RESPONSE: Final[dict[str, Any]] = {
    "ok": True,
    "result": {"id": 1234567, "name": "alice", "age": 42, "tags": ["a", "b"]},
}


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark case.

    ``unit`` is ``"req"`` when the headline rate is requests per second and ``"MB"`` when it is
    throughput in MB/s (10^6 bytes per second). ``body`` is the request body size in bytes for
    upload cases; ``stream_total``/``stream_chunk`` describe the download of the ``stream`` case.
    ``max_inflight`` caps the per-client concurrency for cases where 64 huge requests in flight
    would only measure memory copies.
    """

    name: str
    title: str
    unit: str = "req"
    body: int = 0
    max_inflight: int | None = None
    stream_total: int = 0
    stream_chunk: int = 0
    bulk: int = 0


PING: Final = Case("ping", "heartbeat / protocol-level ping")
NOREPLY: Final = Case("noreply", "fire-and-forget ~50 B msgpack, counted by the server")
SHORT: Final = Case("short", "short response (status only)")
REGULAR: Final = Case("regular", "~50 B msgpack request and response")
DATA_1M: Final = Case("data-1m", "1 MiB request body, short reply", unit="MB", body=MIB)
DATA_4M: Final = Case(
    "data-4m", "4 MiB request body, short reply", unit="MB", body=4 * MIB, max_inflight=16
)
FILE_MEM: Final = Case("file-mem", "1 MiB file sent from memory", unit="MB", body=MIB)
FILE_DISK: Final = Case(
    "file-disk", "1 MiB file read from disk for every request", unit="MB", body=MIB
)
NAGLE_1M: Final = Case(
    "nagle-1m",
    "1 MiB body, one at a time, from a client with Nagle on whose last small packets follow "
    "a pause (as a Node.js client's may)",
    unit="MB",
    body=MIB,
    max_inflight=1,
)
STREAM: Final = Case(
    "stream",
    "download stream of 64 KiB chunks (16 MiB per stream)",
    unit="MB",
    max_inflight=4,
    stream_total=16 * MIB,
    stream_chunk=64 * 1024,
)
FAIRNESS: Final = Case(
    "fairness",
    "regular requests while a 64 MiB upload runs on the same connection",
    max_inflight=8,
    bulk=64 * MIB,
)

CASES: Final[tuple[Case, ...]] = (
    PING,
    NOREPLY,
    SHORT,
    REGULAR,
    DATA_1M,
    DATA_4M,
    FILE_MEM,
    FILE_DISK,
    NAGLE_1M,
    STREAM,
    FAIRNESS,
)
CASES_BY_NAME: Final[dict[str, Case]] = {case.name: case for case in CASES}
ALL_CASE_NAMES: Final[frozenset[str]] = frozenset(CASES_BY_NAME)
