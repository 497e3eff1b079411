"""``sockety-bench`` refuses bad input before starting anything: one line naming the option and
the value, exit status 2. One case per kind of bad input."""

from __future__ import annotations

import pytest

from sockety.benchmark._cli import build_parser

BAD = {
    "port too large": (["-p", "70000"], "argument -p/--port: 70000 is not a port"),
    "zero time": (["-t", "0"], "argument -t/--time: 0 must be a number greater than 0"),
    "negative warmup": (["-w", "-1"], "argument -w/--warmup: -1 must be a number greater"),
    "zero clients": (["-c", "0"], "argument -c/--clients: 0 must be at least 1"),
    "zero concurrency": (["-cc", "0"], "argument -cc/--concurrency: 0 must be at least 1"),
    "zero connections": (["-cn", "0"], "argument -cn/--connections: 0 must be at least 1"),
    "zero workers": (["-s", "0"], "argument -s/--server-workers: 0 must be at least 1"),
    "zero rounds": (["-r", "0"], "argument -r/--rounds: 0 must be at least 1"),
}


@pytest.mark.parametrize(("args", "error"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(args)
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sockety-bench: error: ") and error in last, last


def test_no_warmup_is_allowed() -> None:
    assert build_parser().parse_args(["-w", "0"]).warmup == 0


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("sockety-benchmark 0.1.0 (sockety-core 0.1.0, ")
