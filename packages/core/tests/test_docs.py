"""Docstrings survive the compiled build: mypyc drops them, setup.py writes them back into the
C doc slots, so ``help(Draft)`` reads the same in both builds (tox runs this file on both)."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sockety.core

SOURCE = Path(__file__).resolve().parents[1] / "src"
PUBLIC = ["sockety.core", "sockety.core.aio"]


def public_names() -> Iterator[tuple[str, Any]]:
    """Every name in the public modules' ``__all__`` (type aliases aside: an alias has no
    docstring of its own in Python either)."""
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or (callable(value) and not hasattr(value, "__origin__")):
                yield f"{module_name}.{name}", value


def source_docstrings() -> dict[tuple[str, str, str], str]:
    """(module, class, member) -> docstring, for every public method and property in the
    source (two modules may have a class of the same name: core and aio ``Connection``)."""
    found: dict[tuple[str, str, str], str] = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        module = ".".join(parts)
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(member)
                    if doc and not member.name.startswith("_"):
                        found[(module, node.name, member.name)] = doc
    return found


NAMES = list(public_names())


@pytest.mark.parametrize(("name", "value"), NAMES, ids=[name for name, _ in NAMES])
def test_public_name_has_its_docstring(name: str, value: Any) -> None:
    doc = inspect.getdoc(value)
    assert doc, f"{name} has no docstring (compiled: {sockety.core.COMPILED})"
    if inspect.isclass(value) and value.__module__.startswith("sockety."):
        # Its own, not one inherited from asyncio or object.
        assert "__doc__" in vars(value) and value.__doc__, name


def test_members_keep_their_docstrings() -> None:
    """Every public method and property documented in the source is documented at run time
    (``Message.respond``, ``Router.action``, ``Connection.closed``...)."""
    expected = source_docstrings()
    checked = 0
    missing = []
    for name, value in NAMES:
        if not inspect.isclass(value):
            continue
        for klass in value.__mro__:
            for member, attribute in vars(klass).items():
                doc = expected.get((klass.__module__, klass.__name__, member))
                if doc is None:
                    continue
                checked += 1
                if inspect.getdoc(attribute) != inspect.cleandoc(doc):
                    missing.append(f"{name}.{member}")
    assert checked > 50
    assert not missing, f"members without their docstring: {sorted(set(missing))}"


def test_compiled_signature_and_doc_together() -> None:
    """The compiled doc slot holds the text signature and the docstring: both are readable."""
    from sockety.core.aio import Message

    assert inspect.getdoc(Message.respond).startswith("Starts a response")  # type: ignore[union-attr]
    assert "expects_response" in str(inspect.signature(Message.respond))
    if os.environ.get("SOCKETY_EXPECT_COMPILED") == "1":
        assert sockety.core.COMPILED
