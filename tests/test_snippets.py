"""Every ```python block of the docs (docs/**/*.md) and the READMEs runs as written.

A block is a complete program unless an HTML comment on the line before it says otherwise
(the comment is invisible on GitHub and in the docs site):

- no comment: a program; it must exit with status 0 (and a traceback-free stderr).
- ``<!-- snippet: server -->``: a program that serves on 127.0.0.1:9000 until killed. The test
  starts it with port 9000 swapped for 0 (a free port), waits for the server's "listening on"
  log line, runs the ``client`` blocks that follow it in the same file with 9000 swapped for
  that port, then stops it.
- ``<!-- snippet: client -->``: a program that talks to a server on 127.0.0.1:9000: the last
  ``server`` block of its file, or, in a file without one, ``examples/server.py`` (it answers
  ``ping`` with a response and ``log`` with Accept).
- ``<!-- snippet: fragment -->``: an outline, not a program (an interface, a shape of code): not
  run. Fragments are listed by :func:`test_fragments_are_few` so that none hides a program.

Only 127.0.0.1 is used; every process is bounded in time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    [ROOT / "README.md", *ROOT.glob("packages/*/README.md"), *(ROOT / "docs").rglob("*.md")]
)
BLOCK = re.compile(
    r"(?:<!--\s*snippet:\s*(?P<kind>\w+)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
KINDS = {"program", "server", "client", "fragment"}
PORT = "9000"
TIMEOUT = 60
# Runs a snippet with the server's INFO log on stderr, so the test sees "listening on HOST:PORT".
RUNNER = (
    "import logging, runpy, sys; "
    "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


@dataclass(frozen=True)
class Snippet:
    source: Path
    line: int
    kind: str
    code: str
    server: Snippet | None = None  # for a client: the server block it talks to

    @property
    def name(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"


def snippets() -> Iterator[Snippet]:
    for source in SOURCES:
        text = source.read_text()
        server: Snippet | None = None
        for match in BLOCK.finditer(text):
            kind = match["kind"] or "program"
            line = text.count("\n", 0, match.start("code"))
            snippet = Snippet(source, line, kind, match["code"])
            if kind == "server":
                server = snippet
            elif kind == "client":
                snippet = Snippet(source, line, kind, match["code"], server)
            yield snippet


ALL = list(snippets())
RUNNABLE = [snippet for snippet in ALL if snippet.kind != "fragment"]


def run_program(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


class RunningServer:
    """A server snippet (or examples/server.py) in a subprocess, until stopped."""

    def __init__(self, server: Snippet | None, tmp_path: Path) -> None:
        if server is None:
            command = [sys.executable, str(ROOT / "examples" / "server.py"), "--port", "0"]
        else:
            script = tmp_path / "server.py"
            script.write_text(server.code.replace(PORT, "0"))
            command = [sys.executable, "-c", RUNNER, str(script)]
        self.process = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self.port = self._wait_listening()

    def _wait_listening(self) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # bounded by the test's timeout
            self.output.append(line)
            found = re.search(r"listening on \S*?(\d+)$", line.strip())
            if found:
                return found[1]
        self.process.wait(TIMEOUT)
        raise AssertionError("the server exited before listening:\n" + "".join(self.output))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[snippet.name for snippet in RUNNABLE])
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    assert snippet.kind in KINDS, f"{snippet.name}: unknown snippet kind {snippet.kind!r}"
    if snippet.kind == "program":
        done = run_program(snippet.code, tmp_path)
        assert done.returncode == 0, f"{snippet.name} failed:\n{done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return
    if snippet.kind == "server":
        # Serving proves it starts; a client must also get answers from it.
        server = RunningServer(snippet, tmp_path)
        try:
            assert server.process.poll() is None
        finally:
            server.stop()
        return
    server = RunningServer(snippet.server, tmp_path)
    try:
        done = run_program(snippet.code.replace(PORT, server.port), tmp_path)
    finally:
        server.stop()
    assert done.returncode == 0, (
        f"{snippet.name} failed:\n{done.stdout}{done.stderr}\nserver:\n{''.join(server.output)}"
    )
    assert "Traceback" not in done.stderr, done.stderr


def test_every_server_snippet_has_a_client() -> None:
    """A server block alone proves only that it starts: each one is followed by a client."""
    served = {snippet.server for snippet in ALL if snippet.kind == "client"}
    lonely = [s.name for s in ALL if s.kind == "server" and s not in served]
    assert not lonely, f"server snippets without a client snippet: {lonely}"


def test_fragments_are_few() -> None:
    """Fragments are outlines, never runnable examples in disguise: the list is fixed here, so
    that marking a new block as a fragment is a visible decision."""
    fragments = sorted(s.name.split(":")[0] for s in ALL if s.kind == "fragment")
    assert fragments == ["packages/benchmark/README.md", "packages/benchmark/README.md"]


def test_snippets_found() -> None:
    """The pattern finds the blocks (a broken pattern would run nothing and pass)."""
    texts = sum(source.read_text().count("```python") for source in SOURCES)
    assert len(ALL) == texts
    assert len(RUNNABLE) >= 10
