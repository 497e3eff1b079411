"""Builds sockety-core, its hot modules compiled to C with mypyc when possible.

The compiled modules are the same source: parsing, encoding, the connection's event handling
and the per-message objects, 1.3-1.5x faster per message (see the README's "How fast"). They
need a C compiler at install time; without one, with ``SOCKETY_PURE_PYTHON=1``, or in an
editable install (``pip install -e``), the package installs as pure Python and behaves the
same. ``sockety.core.COMPILED`` says which.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_MODULES = [
    "src/sockety/core/_receiver.py",
    "src/sockety/core/_sender.py",
    "src/sockety/core/_connection.py",
    "src/sockety/core/aio/_connection.py",
    "src/sockety/core/aio/_drafts.py",
    "src/sockety/core/aio/_exchanges.py",
    "src/sockety/core/aio/_router.py",
    "src/sockety/core/aio/_streams.py",
]
# Editable installs stay pure: compiled modules next to the sources would shadow every edit.
PURE = os.environ.get("SOCKETY_PURE_PYTHON", "") not in ("", "0") or "editable_wheel" in sys.argv


def _warn(text: str) -> None:
    print(f"sockety-core: {text}; installing pure Python (works the same, slower)", file=sys.stderr)


def compiled_extensions() -> list[Any]:
    if PURE:
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - optional: only to compile

        os.environ["MYPYPATH"] = "src"  # the sockety namespace starts there
        return mypycify(
            # No config file: the workspace's (found upwards) type-checks, this only compiles.
            [
                "--config-file=",
                "--explicit-package-bases",
                "--ignore-missing-imports",
                *HOT_MODULES,
            ],
            opt_level="3",
            target_dir=os.path.join("build", "mypyc"),
            group_name="sockety_core",  # the shared runtime: sockety_core__mypyc.*.so
        )
    except (Exception, SystemExit) as error:  # mypyc missing or refusing the code
        _warn(f"mypyc could not translate the hot modules ({error!r})")
        return []


class OptionalBuildExt(build_ext):
    """Builds the compiled modules if a C compiler works; otherwise builds none of them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            # All or nothing: a compiled module without its shared runtime would not import.
            for output in self.get_outputs():
                if os.path.exists(output):
                    os.remove(output)
            self.extensions = []
            _warn(f"compiling failed ({error})")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


setup(
    ext_modules=compiled_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    # Separate build trees, so that a pure build never packs a compiled one's leftovers.
    options={"build": {"build_base": os.path.join("build", "pure" if PURE else "compiled")}},
)
