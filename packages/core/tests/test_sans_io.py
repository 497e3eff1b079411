"""The core is sans-IO: outside its ``aio`` subpackage it never imports an I/O or concurrency
module, so it can be driven by any event loop (or none) and tested without one."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import sockety.core

FORBIDDEN = ("asyncio", "socket", "ssl", "selectors", "threading")
CORE_DIR = Path(sockety.core.__file__).resolve().parent
AIO_DIR = CORE_DIR / "aio"


def core_modules() -> list[Path]:
    return sorted(
        path for path in CORE_DIR.rglob("*.py") if AIO_DIR not in path.parents and path != AIO_DIR
    )


def imported_top_level(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_the_scan_sees_the_core_modules() -> None:
    names = {path.name for path in core_modules()}
    assert {"__init__.py", "_receiver.py", "_sender.py", "_connection.py"} <= names
    assert not any("aio" in path.relative_to(CORE_DIR).parts for path in core_modules())


def test_the_scan_would_notice_an_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, asyncio.events\nfrom socket import socket\n"
        "from . import x\nimportlib.import_module('threading')\n"
    )
    assert imported_top_level(sample) >= {"asyncio", "socket", "threading", "os"}


def test_no_core_module_imports_io_statically() -> None:
    offenders = {
        str(path.relative_to(CORE_DIR)): sorted(imported_top_level(path) & set(FORBIDDEN))
        for path in core_modules()
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_importing_the_core_pulls_in_no_io_module() -> None:
    code = (
        "import json, sys\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "before = {name for name in forbidden if name in sys.modules}\n"
        "import sockety.core\n"
        "from sockety.core import Connection, new_id\n"
        "a, b = Connection(), Connection()\n"
        "b.receive_data(a.bytes_to_send()); a.receive_data(b.bytes_to_send())\n"
        "a.send_message(new_id(), 'ping', b'x')\n"
        "assert b.receive_data(a.bytes_to_send())\n"
        "after = {name for name in forbidden if name in sys.modules} - before\n"
        "print(json.dumps([sorted(before), sorted(after)]))\n"
        "sys.exit(1 if after else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=str(CORE_DIR.parent.parent.parent),  # packages/core: no stray top-level packages
    )
    assert result.returncode == 0, result.stdout + result.stderr
    before, after = json.loads(result.stdout)
    # The interpreter itself must not have loaded them either, or the check would prove nothing.
    assert before == []
    assert after == []
