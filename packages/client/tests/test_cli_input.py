"""``sockety`` refuses bad input before connecting: one line naming the option and the value
(or the file), exit status 2. One case per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from sockety.client._cli import main

BAD = {
    "port too large": (["127.0.0.1:99999"], "address '127.0.0.1:99999' must be HOST:PORT"),
    "no port": (["127.0.0.1"], "address '127.0.0.1' must be HOST:PORT"),
    "zero timeout": (["127.0.0.1:9", "--timeout", "0"], "argument --timeout: 0 must be"),
    "negative timeout": (["127.0.0.1:9", "--timeout", "-1"], "argument --timeout: -1 must be"),
    "missing ca": (["127.0.0.1:9", "--ca", "noca.pem"], "argument --ca: no such file: noca.pem"),
    "missing cert": (["127.0.0.1:9", "--cert", "no.pem"], "argument --cert: no such file: no.pem"),
    "missing key": (["127.0.0.1:9", "--key", "nokey.pem"], "argument --key: no such file"),
}


@pytest.mark.parametrize(("args", "error"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    address, *options = args
    try:
        status = main(["call", address, "ping", *options])
    except SystemExit as exit:  # argparse
        status = exit.code  # type: ignore[assignment]
    assert status == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sockety") and " error: " in last and error in last, last


def test_key_without_cert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
    assert main(["call", "127.0.0.1:9", "ping", "--key", str(key)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sockety: error: --key needs --cert (the certificate it belongs to)"]


def test_unreadable_ca_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert main(["call", "127.0.0.1:9", "ping", "--ca", str(garbage)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(garbage) in err[0], err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("sockety-client 0.1.0 (sockety-core 0.1.0, ")
