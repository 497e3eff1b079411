"""The README's examples are real files; run them as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[3] / "examples"


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_server_and_client_examples() -> None:
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split()[-1]
        assert run_example("client.py", "--port", port).splitlines() == ["pong"]
        assert server.stdout.readline().strip() == "[log] some text"
        assert server.stdout.readline().strip() == "[log] more text"
    finally:
        server.kill()
        server.wait(5)


def test_streams_example() -> None:
    assert run_example("streams.py") == "HELLO, STREAMING WORLD\n"


def test_files_example() -> None:
    lines = run_example("files.py").splitlines()
    assert lines[0].startswith("saved memory.txt: 18 bytes")
    assert lines[1].startswith("saved disk.txt: 15000 bytes")
    assert lines[2].startswith("saved generated.bin: 10000 bytes")
    assert lines[3] == "reply: 0"


def test_tls_example() -> None:
    assert run_example("tls.py").splitlines() == ["encrypted: True", "ping: ACCEPT"]
