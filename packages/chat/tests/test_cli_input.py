"""``sockety-chat`` refuses bad input before starting: one line naming the option and the value
(or the file), exit status 2."""

from __future__ import annotations

import pytest

from sockety.chat._cli import build_parser

BAD = {
    "port too large": (["--port", "99999"], "argument --port: 99999 is not a port"),
    "serve port": (["serve", "--port", "65536"], "argument --port: 65536 is not a port"),
    "missing cert": (["serve", "--tls-cert", "no.pem"], "argument --tls-cert: no such file"),
    "missing key": (["serve", "--tls-key", "no.pem"], "argument --tls-key: no such file: no.pem"),
    "missing ca": (["join", "127.0.0.1:9", "--tls-ca", "ca.pem"], "no such file: ca.pem"),
}


@pytest.mark.parametrize(("args", "error"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(args)
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sockety-chat") and " error: " in last and error in last, last


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("sockety-chat 0.1.0 (sockety-core 0.1.0, ")
