"""The modules on the per-statement path, compiled to C with mypyc.

The fast lane's statements run through a handful of modules (packet framing, the backend
relay and its response scanner, the pool, the fast lane, classification, the session, the
plan cache and the sharding algorithms: MODULES). Compiled with mypyc, the same
Python source runs as a C extension: attribute access and calls between these classes
become C struct reads and direct calls, which roughly halves the sidecar's own CPU per
statement (benchmarks/NOTES.md). There is one implementation, the Python source; the build
is an optional speed-up, and without it (no compiler, another Python) the sources run.

    python -m dbmesh native build    # compile in place (scripts/setup.sh does this)
    python -m dbmesh native status   # which modules run compiled
    python -m dbmesh native clean    # remove the compiled modules

A compiled module is used only while its source is byte for byte what was compiled: the
build records each source's hash, and at import (dbmesh/__init__.py) a changed source makes
*all* of them load from source, with a warning, so an edit is never shadowed by an old
build and compiled and interpreted halves never mix. DBMESH_NATIVE=0 in the environment
does the same on purpose (debuggers, line-level profilers).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the folder holding the dbmesh package
MANIFEST = ROOT / "dbmesh" / "_native.json"
# The shared library mypyc builds for the group (dbmesh/_native__mypyc.*.so).
GROUP = "dbmesh._native"

# Compiled together, in dependency order. A module here must type-check with mypy, and its
# classes follow mypyc's rules (no attributes added from outside the class, no subclassing
# of most built-in exception types: see protocol/closed.py).
MODULES = (
    "dbmesh.protocol.scanner",
    "dbmesh.protocol.packets",
    "dbmesh.protocol.coldefs",
    "dbmesh.protocol.binary",
    "dbmesh.backend.pool",
    "dbmesh.backend.connection",
    "dbmesh.frontend.statement",
    "dbmesh.frontend.fast_lane",
    "dbmesh.frontend.session",
    "sharding.algorithms",
    "sharding.plan_cache",
)


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _built_hashes() -> dict[str, str]:
    try:
        return json.loads(MANIFEST.read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def stale_modules() -> list[str]:
    """Modules whose source differs from what was compiled (all of them when never built)."""
    built = _built_hashes()
    return [m for m in MODULES if built.get(m) != _digest(source_path(m))]


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled modules' names from their .py sources (which the import system
    would otherwise pass over for the extension module beside them)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def prefer_sources_if_stale() -> None:
    """Run from dbmesh/__init__.py, before any compiled module can be imported."""
    if not _compiled_files():
        return  # nothing compiled: the sources load anyway
    if os.environ.get("DBMESH_NATIVE", "1") == "0":
        sys.meta_path.insert(0, _SourcesFirst())  # asked for: no warning
        return
    stale = stale_modules()
    if stale:
        warnings.warn(f"the source of {', '.join(stale)} changed since the compiled modules were built; "
                      "running the Python sources (rebuild: python -m dbmesh native build)",
                      RuntimeWarning, stacklevel=2)
        sys.meta_path.insert(0, _SourcesFirst())


def compiled_modules() -> list[str]:
    """The modules of MODULES that this process runs as compiled extensions."""
    found = []
    for module in MODULES:
        __import__(module)
        if not sys.modules[module].__file__.endswith(".py"):
            found.append(module)
    return found


def status() -> str:
    """One line for the startup log: compiled or sources, and why."""
    compiled = compiled_modules()
    if len(compiled) == len(MODULES):
        return "hot-path modules compiled (mypyc)"
    if compiled:
        return f"hot-path modules partly compiled: {', '.join(compiled)}"
    return "hot-path modules run as Python sources (build them: python -m dbmesh native build)"


def _compiled_files() -> list[Path]:
    """The build's outputs: the group library and a module's extension beside each source it
    shadows, also of a module no longer in MODULES (Python would import the extension)."""
    files = list((ROOT / "dbmesh").glob("_native__mypyc.*.so"))
    for package in {m.split(".")[0] for m in MODULES}:
        files += [path for path in (ROOT / package).rglob("*.so")
                  if path.with_name(path.name.split(".")[0] + ".py").exists()]
    return files


def up_to_date() -> bool:
    """Every module compiled, from its source as it is now."""
    built = {path.name.split(".")[0] for path in _compiled_files()}
    return not stale_modules() and all(m.rsplit(".", 1)[1] in built for m in MODULES)


def clean() -> None:
    for path in _compiled_files():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def build() -> None:
    """Compile MODULES in place with mypyc and record their sources' hashes."""
    from mypyc.build import mypycify  # build-time only: mypy is not needed to run dbmesh
    from setuptools import setup

    clean()
    hashes = {m: _digest(source_path(m)) for m in MODULES}
    previous = Path.cwd()
    os.chdir(ROOT)  # mypyc names modules after their paths relative to the working folder
    try:
        extensions = mypycify(
            [str(source_path(m).relative_to(ROOT)) for m in MODULES]
            + ["--follow-imports=silent", "--ignore-missing-imports"],
            opt_level="3", group_name=GROUP)
        setup(name="dbmesh-native", ext_modules=extensions, script_args=["build_ext", "--inplace", "-q"])
    finally:
        os.chdir(previous)
    MANIFEST.write_text(json.dumps({"sources": hashes}, indent=1) + "\n")
