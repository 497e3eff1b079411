"""Pure pieces of the harness: percentiles, filters, core planning."""

from __future__ import annotations

import pytest

from sockety.benchmark._cli import build_parser, select
from sockety.benchmark._output import median_rounds
from sockety.benchmark._runner import plan_cores
from sockety.benchmark._stats import percentiles
from sockety.benchmark._suites import load_suites

pytestmark = pytest.mark.timeout(30)


def test_percentiles_are_exact_nearest_rank() -> None:
    samples = list(range(1000, 101_000, 1000))  # 1..100 µs, shuffled order must not matter
    result = percentiles(samples[::-1])
    assert result == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) is None
    assert percentiles([7000]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7.0}


def test_filters_and_between_flags_or_within_commas() -> None:
    suites, problems = load_suites()
    assert problems == []
    names = [s.name for s in suites]
    assert names[0] == "raw"  # the yardstick comes first
    plan = select(suites, ["raw", "regular"], [])
    assert [(s.name, [c.name for c in cases]) for s, cases in plan] == [("raw", ["regular"])]
    plan = select(suites, ["raw,grpc", "short,regular"], ["grpc short"])
    assert [(s.name, [c.name for c in cases]) for s, cases in plan] == [
        ("raw", ["short", "regular"]),
        ("grpc", ["regular"]),
    ]
    assert select(suites, ["nothing-matches"], []) == []


def test_cli_accepts_two_letter_options() -> None:
    args = build_parser().parse_args(["-c", "2", "-cc", "16", "-cn", "3", "-s", "2"])
    assert (args.clients, args.concurrency, args.connections, args.server_workers) == (2, 16, 3, 2)


def test_plan_cores_keeps_sides_apart() -> None:
    servers, clients, text = plan_cores(1, 1)
    if "not pinned" in text:
        pytest.skip(text)
    assert servers[0] and clients[0]
    assert not set(servers[0]) & set(clients[0])
    servers, clients, text = plan_cores(1, 1, pin=False)
    assert servers == [None] and clients == [None] and "not pinned" in text


def _row(suite: str, case: str, rate: float, status: str = "ok") -> dict[str, object]:
    return {"suite": suite, "case": case, "rate": rate, "status": status}


def test_rounds_keep_the_median_round_of_each_suite_and_case() -> None:
    rows = [
        _row("raw", "short", 300.0),
        _row("sockety-tcp", "short", 500.0),
        _row("raw", "short", 100.0),
        _row("sockety-tcp", "short", 400.0, "error"),
        _row("raw", "short", 200.0),
        _row("sockety-tcp", "short", 450.0),
        _row("grpc", "ping", 0.0, "n/a"),
        _row("grpc", "ping", 0.0, "n/a"),
    ]
    raw, sockety, grpc = median_rounds(rows)
    assert raw == {**_row("raw", "short", 200.0), "rounds": [300.0, 100.0, 200.0]}
    assert sockety["status"] == "error"  # a failed round is shown, not outvoted
    assert grpc["status"] == "n/a" and "rounds" not in grpc
    # Two rounds: the lower one (the ratio to the ceiling is not flattered by the luckier).
    (two,) = median_rounds([_row("raw", "short", 300.0), _row("raw", "short", 100.0)])
    assert two["rate"] == 100.0 and two["rounds"] == [300.0, 100.0]
    # The fairness case is ranked by its figure, the p99 ratio (lower is better).
    fair = [
        {**_row("raw", "fairness", rate), "fairness": {"p99_ratio": ratio}}
        for rate, ratio in [(10.0, 3.0), (30.0, 9.0), (20.0, 5.0), (40.0, 4.0)]
    ]
    (picked,) = median_rounds(fair)
    assert picked["fairness"]["p99_ratio"] == 5.0 and picked["rounds"] == [3.0, 9.0, 5.0, 4.0]
    # A round without the ratio (no unloaded baseline): the rounds are ranked by rate.
    fair[0]["fairness"] = {"p99_ratio": None}
    (picked,) = median_rounds(fair)
    assert picked["rate"] == 20.0 and picked["rounds"] == [10.0, 30.0, 20.0, 40.0]
    # One round: the row as it was.
    assert median_rounds([_row("raw", "short", 1.0)]) == [_row("raw", "short", 1.0)]
