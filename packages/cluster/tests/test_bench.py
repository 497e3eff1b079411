"""``sockety-cluster-bench`` on a tiny case: every broadcast reaches every client."""

from __future__ import annotations

import re

import pytest

from sockety.cluster._bench import main


def test_bench_runs_a_tiny_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--servers", "1,2", "--clients", "4", "--messages", "25", "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert "cross-server broadcast fan-out" in out
    assert len(re.findall(r"│\s+100/100 │", out)) == 2  # delivered/expected, both cases
