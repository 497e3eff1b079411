"""Argument types and ``--version`` shared by the Sockety command lines (``sockety-server``,
``sockety``, ``sockety-bench``, ``sockety-chat``): bad input is refused by argparse with one line
that names the option and the value, before anything starts."""

from __future__ import annotations

import argparse
import os
from importlib import metadata
from typing import Any

__all__ = [
    "add_version",
    "existing_file",
    "port",
    "positive_float",
    "positive_int",
    "version_text",
]


def _parse(text: str, convert: type[int] | type[float], what: str) -> Any:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: any free port)."""
    value: int = _parse(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: ports are 0 to 65535")
    return value


def positive_float(text: str) -> float:
    """A number of seconds (or any quantity) greater than 0."""
    value: float = _parse(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number greater than 0")
    return value


def positive_int(text: str) -> int:
    """A count of at least 1."""
    value: int = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def existing_file(text: str) -> str:
    """The path of a file that exists and can be read (certificates, keys, CAs)."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}: permission denied")
    return text


def version_text(distribution: str) -> str:
    """``sockety-server 0.1.0 (sockety-core 0.1.0, compiled)``."""
    from sockety.core import COMPILED  # noqa: PLC0415 - only when asked

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:  # running from a source tree
            return "unknown"

    build = "compiled" if COMPILED else "pure Python"
    core = f"sockety-core {version('sockety-core')}, {build}"
    if distribution == "sockety-core":
        return core
    return f"{distribution} {version(distribution)} ({core})"


class _Version(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, distribution: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")
        self.distribution = distribution

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_text(self.distribution))  # stdout, as argparse's own version action
        parser.exit()


def add_version(parser: argparse.ArgumentParser, distribution: str) -> None:
    """Adds ``--version``, which prints :func:`version_text` and exits 0."""
    parser.add_argument("--version", action=_Version, distribution=distribution)
