"""Builds sockety-core, its hot modules compiled to C with mypyc when possible.

The compiled modules are the same source: parsing, encoding, the connection's event handling
and the per-message objects, 1.3-1.5x faster per message (see the README's "How fast"). They
need a C compiler at install time; without one, with ``SOCKETY_PURE_PYTHON=1``, or in an
editable install (``pip install -e``), the package installs as pure Python and behaves the
same. ``sockety.core.COMPILED`` says which.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_MODULES = [
    "src/sockety/core/_budget.py",
    "src/sockety/core/_receiver.py",
    "src/sockety/core/_sender.py",
    "src/sockety/core/_connection.py",
    "src/sockety/core/aio/_connection.py",
    "src/sockety/core/aio/_dispatch.py",
    "src/sockety/core/aio/_drafts.py",
    "src/sockety/core/aio/_exchanges.py",
    "src/sockety/core/aio/_files.py",
    "src/sockety/core/aio/_flow.py",
    "src/sockety/core/aio/_input.py",
    "src/sockety/core/aio/_output.py",
    "src/sockety/core/aio/_port.py",
    "src/sockety/core/aio/_router.py",
    "src/sockety/core/aio/_streams.py",
]
# Editable installs stay pure: compiled modules next to the sources would shadow every edit.
PURE = os.environ.get("SOCKETY_PURE_PYTHON", "") not in ("", "0") or "editable_wheel" in sys.argv


def _warn(text: str) -> None:
    print(f"sockety-core: {text}; installing pure Python (works the same, slower)", file=sys.stderr)


def docstrings(paths: list[str]) -> dict[tuple[str, str | None, str], str]:
    """(module, class or None, name) -> docstring, for the classes, functions, methods and
    properties of the hot modules (read from their source, as Python would)."""
    found: dict[tuple[str, str | None, str], str] = {}
    for path in paths:
        module = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
        scopes: list[tuple[str | None, ast.AST]] = [(None, tree)]
        scopes += [(node.name, node) for node in tree.body if isinstance(node, ast.ClassDef)]
        for owner, scope in scopes:
            for node in ast.iter_child_nodes(scope):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    doc = ast.get_docstring(node)
                    if doc and not (owner is None and isinstance(node, ast.ClassDef)):
                        found[(module, owner, node.name)] = doc
            if owner is not None and isinstance(scope, ast.ClassDef):
                doc = ast.get_docstring(scope)
                if doc:
                    found[(module, None, owner)] = doc
    return found


# What mypyc writes into its C doc slots (mypy 2.4 drops the docstrings, keeping only a text
# signature): method tables, property getters and type templates, each named after the module,
# class and member (NameGenerator joins the dotted names with "___").
_DOC = r"(NULL|(?:\"(?:[^\"\\]|\\.)*\"\s*)+)"  # NULL, or adjacent C string literals
_METHOD = re.compile(r"\(PyCFunction\)CPyPy_(\w+),(\s*[^\n]*?PyDoc_STR\()" + _DOC + r"\)")
_GETTER = re.compile(r"\(getter\)(\w+?)_get_(\w+),((?:\s*\(setter\)\w+,)?\s*)(NULL, )?NULL, NULL\}")
_TYPE = re.compile(
    r"(PyTypeObject CPyType_(\w+)_template_ = \{[^}]*?\.tp_doc = PyDoc_STR\()" + _DOC + r"\)"
)
_COROUTINE = re.compile(
    r"PyObject\* wrapper_CPyPy_(\w+) = CPyFunction_New\(.*\);\n"
    r"(\s*)if \(unlikely\(!wrapper_CPyPy_\1\)\)\n\s*return 2;\n"
)
_MARK = "/* sockety-core: docstrings kept (setup.py) */\n"
# mypyc wraps coroutine methods in a function type whose __doc__ is None: give that type a
# __doc__ that reads the C doc slot (the part after the text signature), as built-ins do.
_FUNCTION_DOC = r"""
static PyObject *sockety_function_doc(PyObject *op, void *context) {
    (void)context;
    const char *doc = ((PyCFunctionObject *)op)->m_ml->ml_doc;
    const char *body = doc != NULL ? strstr(doc, "\n--\n\n") : NULL;
    doc = body != NULL ? body + 5 : doc;
    if (doc == NULL || *doc == '\0')
        Py_RETURN_NONE;
    return PyUnicode_FromString(doc);
}
static PyGetSetDef sockety_function_doc_def = {"__doc__", sockety_function_doc, NULL, NULL, NULL};
static int sockety_expose_function_doc(PyObject *function) {
    PyTypeObject *type = Py_TYPE(function);
    if (PyDict_GetItemString(type->tp_dict, "__doc__") != Py_None)
        return 0;  /* done already */
    PyObject *descr = PyDescr_NewGetSet(type, &sockety_function_doc_def);
    if (descr == NULL)
        return -1;
    int result = PyDict_SetItemString(type->tp_dict, "__doc__", descr);
    Py_DECREF(descr);
    PyType_Modified(type);
    return result;
}
"""


def _c_literal(text: str) -> str:
    """A C string literal of ``text`` (UTF-8; octal escapes, so no escape runs into the next
    character), in chunks that every compiler accepts."""
    escaped = "".join(
        chr(byte) if 32 <= byte < 127 and byte not in b'"\\?' else f"\\{byte:03o}"
        for byte in text.encode("utf-8")
    )
    return " ".join(f'"{escaped[i : i + 2000]}"' for i in range(0, len(escaped), 2000))


def keep_docstrings(directory: str, docs: dict[tuple[str, str | None, str], str]) -> int:
    """Writes the docstrings into the C that mypyc generated in ``directory``, where it left
    only signatures: ``help(Draft)`` shows the same text as in pure Python. Only the doc slots
    change, not one call, so the compiled code runs exactly as fast. Returns how many were
    written (a test checks the compiled build's docs, so a mypyc that changes its output fails
    there, not silently); a failure here leaves the build compiled, without them."""

    def find(parts: list[str]) -> str | None:
        # parts: module suffix..., [class,] name; the module is named by its shortest unique
        # suffix ("aio._connection"), so match suffixes.
        for owner_given in (True, False):
            cut = len(parts) - (2 if owner_given else 1)
            if cut < 1:
                continue
            suffix = "." + ".".join(parts[:cut])
            owner = parts[-2] if owner_given else None
            for (module, doc_owner, name), doc in docs.items():
                if doc_owner == owner and name == parts[-1] and ("." + module).endswith(suffix):
                    return doc
        return None

    def with_doc(existing: str, doc: str | None) -> str | None:
        if doc is None:
            return None
        text = _c_literal(inspect.cleandoc(doc))
        return text if existing == "NULL" else f"{existing.strip()} {text}"

    written = 0
    for root, _, files in os.walk(directory):
        for file in files:
            if not file.endswith(".c"):
                continue
            path = os.path.join(root, file)
            with open(path, encoding="utf-8") as source:
                code = source.read()
            if code.startswith(_MARK):
                continue

            def method(match: re.Match[str]) -> str:
                nonlocal written
                doc = with_doc(match[3], find(match[1].split("___")))
                if doc is None:
                    return match[0]
                written += 1
                return f"(PyCFunction)CPyPy_{match[1]},{match[2]}{doc})"

            def getter(match: re.Match[str]) -> str:
                nonlocal written
                doc = with_doc("NULL", find([*match[1].split("___"), match[2]]))
                if doc is None:
                    return match[0]
                written += 1
                setter = match[4] or ""  # "NULL, " for a read-only property
                return (
                    f"(getter){match[1]}_get_{match[2]},{match[3]}{setter}PyDoc_STR({doc}), NULL}}"
                )

            def type_doc(match: re.Match[str]) -> str:
                nonlocal written
                parts = match[2].split("___")
                doc = with_doc(match[3], find([*parts[:-1], parts[-1]]) if len(parts) > 1 else None)
                if doc is None:
                    return match[0]
                written += 1
                return f"{match[1]}{doc})"

            def coroutine(match: re.Match[str]) -> str:
                return (
                    f"{match[0]}{match[2]}if (sockety_expose_function_doc("
                    f"wrapper_CPyPy_{match[1]}) < 0)\n{match[2]}    return 2;\n"
                )

            code = _TYPE.sub(type_doc, _GETTER.sub(getter, _METHOD.sub(method, code)))
            if "CPyFunction_New(" in code and "#include <function_wrapper.c>" in code:
                code = _COROUTINE.sub(coroutine, code)
                last = code.rindex("#include <")
                end = code.index("\n", last) + 1
                code = code[:end] + _FUNCTION_DOC + code[end:]
            with open(path, "w", encoding="utf-8") as output:
                output.write(_MARK + code)
    return written


def compiled_extensions() -> list[Any]:
    if PURE:
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - optional: only to compile

        os.environ["MYPYPATH"] = "src"  # the sockety namespace starts there
        target = os.path.join("build", "mypyc")
        extensions = mypycify(
            # No config file: the workspace's (found upwards) type-checks, this only compiles.
            [
                "--config-file=",
                "--explicit-package-bases",
                "--ignore-missing-imports",
                *HOT_MODULES,
            ],
            opt_level="3",
            target_dir=target,
            group_name="sockety_core",  # the shared runtime: sockety_core__mypyc.*.so
        )
        try:
            written = keep_docstrings(target, docstrings(HOT_MODULES))
        except Exception as error:  # docs are not worth the speed: compile without them
            print(f"sockety-core: docstrings not kept ({error!r})", file=sys.stderr)
        else:
            print(f"sockety-core: {written} docstrings written into the compiled modules")
        return extensions
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
