"""``sockety-cluster-bench`` refuses bad input before starting anything (one line naming the
option and the value) and answers ``--version``."""

from __future__ import annotations

import pytest

from sockety.cluster._bench import build_parser

BAD = {
    "zero clients": (["--clients", "0"], "argument --clients: 0 must be at least 1"),
    "zero messages": (["--messages", "0"], "argument --messages: 0 must be at least 1"),
    "size not a number": (["--size", "big"], "argument --size: 'big' is not a whole number"),
    "zero window": (["--window", "0"], "argument --window: 0 must be at least 1"),
}


@pytest.mark.parametrize(("args", "error"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(args)
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sockety-cluster-bench: error: ") and error in last, last


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("sockety-cluster 0.1.0 (sockety-core 0.1.0, ")
