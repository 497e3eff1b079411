"""Builds a wheel for every package under packages/ into dist/, and proves each one installs alone.

    python .ci/wheelhouse.py build            # dist/*.whl, one per packages/*/pyproject.toml
    python .ci/wheelhouse.py check            # each distribution, alone, in a fresh venv
    python .ci/wheelhouse.py check sockety-server

``check`` does what a user does: ``python -m venv`` (the pip it ships, not upgraded), then
``pip install --find-links dist NAME``. Third-party dependencies come from PyPI; every
``sockety-*`` one must come from dist/ (pip's installation report says where each came from),
and then the package must import and its command lines answer ``--version``. Packages are found
by their pyproject.toml, so a new one is included without editing this file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"


def packages() -> dict[str, tuple[Path, dict[str, object]]]:
    """Distribution name -> (its directory, its [project] table), for every packages/*/."""
    found = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        found[project["name"]] = (pyproject.parent, project)
    return found


def build() -> None:
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob("sockety_*.whl"):
        old.unlink()
    directories = [str(directory) for directory, _ in packages().values()]
    # --no-deps: siblings are built here, not looked up on an index; one pip run, one build
    # environment per package (sockety-core's compiles its hot modules with mypyc).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(DIST),
            *directories,
        ],
        check=True,
    )
    wheels = sorted(path.name for path in DIST.glob("sockety_*.whl"))
    if len(wheels) != len(directories):
        sys.exit(f"expected {len(directories)} wheels in {DIST}, found {wheels}")
    print("\n".join(wheels))


def check(name: str, project: dict[str, object], workdir: Path) -> None:
    environment = workdir / name
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    report = workdir / f"{name}.json"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--find-links",
            str(DIST),
            "--report",
            str(report),
            name,
        ],
        check=True,
    )
    installed = json.loads(report.read_text())["install"]
    for item in installed:
        dependency = item["metadata"]["name"]
        url = item["download_info"]["url"]
        if dependency.startswith("sockety-") and not url.startswith(DIST.as_uri()):
            sys.exit(f"{name}: {dependency} came from {url}, not from {DIST}")
    module = "sockety." + name.removeprefix("sockety-")
    subprocess.run([str(python), "-c", f"import {module}"], check=True)
    for script in project.get("scripts", {}):  # type: ignore[attr-defined]
        done = subprocess.run(
            [str(environment / "bin" / script), "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not done.stdout.strip():
            sys.exit(f"{name}: `{script} --version` failed: {done.stderr.strip()}")
    names = sorted(
        item["metadata"]["name"]
        for item in installed
        if item["metadata"]["name"].startswith("sockety-")
    )
    print(f"{name}: installs alone from dist/ ({', '.join(names)}), imports {module}")


def main(argv: list[str]) -> None:
    command, *names = argv or ["build"]
    if command == "build":
        build()
        return
    if command != "check":
        sys.exit(__doc__)
    found = packages()
    unknown = set(names) - set(found)
    if unknown:
        sys.exit(f"unknown packages: {sorted(unknown)}; known: {sorted(found)}")
    workdir = Path(tempfile.mkdtemp(prefix="sockety-wheelhouse-"))
    try:
        for name in names or found:
            check(name, found[name][1], workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
