"""Suite discovery: every public module here that exports ``SUITES`` contributes suites.

Adding a protocol stack is one module: ``_suites/NAME.py`` defining ``Suite`` subclasses and
``SUITES = [MySuite(), ...]``. A module whose imports fail (e.g. an optional dependency is not
installed) is skipped and reported by ``sockety-bench --list``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .._suite import Suite

__all__ = ["load_suites"]


def load_suites() -> tuple[list[Suite], list[str]]:
    """All available suites sorted for display, and why any module could not be loaded."""
    suites: list[Suite] = []
    problems: list[str] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except ImportError as exc:
            problems.append(f"{info.name}: {exc}")
            continue
        suites.extend(s for s in getattr(module, "SUITES", ()) if isinstance(s, Suite))
    suites.sort(key=lambda s: (s.order, s.name))
    return suites, problems
