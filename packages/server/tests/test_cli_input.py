"""``sockety-server`` refuses bad input before it starts: one line naming the option and the
value (or the file), exit status 2. One case per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from sockety.server._cli import main


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("pem")
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    (directory / "garbage.pem").write_text("not a certificate\n")
    return {name: str(directory / f"{name}.pem") for name in ("cert", "key", "garbage")}


BAD = {
    "port too large": (["--port", "99999"], "argument --port: 99999 is not a port"),
    "negative port": (["--port", "-1"], "argument --port: -1 is not a port"),
    "port not a number": (["--port", "http"], "argument --port: 'http' is not a port number"),
    "metrics port": (["--metrics-port", "65536"], "argument --metrics-port: 65536 is not a port"),
    "zero timeout": (["--timeout", "0"], "argument --timeout: 0 must be a number greater than 0"),
    "negative timeout": (["--timeout", "-1"], "argument --timeout: -1 must be a number greater"),
    "nan heartbeat": (["--heartbeat", "nan"], "argument --heartbeat: nan must be a number"),
    "zero grace": (["--grace", "0"], "argument --grace: 0 must be a number greater than 0"),
    "zero workers": (["--workers", "0"], "argument --workers: 0 must be at least 1"),
    "zero connections": (["--max-connections", "0"], "argument --max-connections: 0 must be"),
    "missing cert": (
        ["--tls-cert", "missing.pem"],
        "argument --tls-cert: no such file: missing.pem",
    ),
    "missing key": (["--tls-key", "nokey.pem"], "argument --tls-key: no such file: nokey.pem"),
    "missing ca": (["--tls-ca", "noca.pem"], "argument --tls-ca: no such file: noca.pem"),
}


@pytest.mark.parametrize(("args", "error"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["json:dumps", *args])
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sockety-server: error: ") and error in last, last


def test_key_without_cert(pem: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["json:dumps", "--tls-key", pem["key"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tls-cert and --tls-key go together" in err[0]


def test_unreadable_certificate_names_the_files(
    pem: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["json:dumps", "--port", "0", "--tls-cert", pem["garbage"], "--tls-key", pem["key"]])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pem["garbage"] in err[0] and pem["key"] in err[0], err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("sockety-server 0.1.0 (sockety-core 0.1.0, ")


def test_good_input_is_taken(tmp_path: Path) -> None:
    """The limits themselves are accepted (0 is any port; fractions of seconds are fine)."""
    from sockety.server._cli import build_parser

    args = build_parser().parse_args(
        ["x:y", "--port", "0", "--timeout", "0.5", "--metrics-port", "65535"]
    )
    assert (args.port, args.timeout, args.metrics_port) == (0, 0.5, 65535)
