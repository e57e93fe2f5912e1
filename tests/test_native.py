"""The compiled hot-path modules (dbmesh/native.py): in use after the build, never shadowing
an edited source, and switched off by DBMESH_NATIVE=0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dbmesh import native

ROOT = Path(__file__).resolve().parent.parent

# Prints, per hot-path module, whether it loaded compiled ("so") or from source ("py").
PROBE = (
    "import sys, dbmesh.native as n\n"
    "for m in n.MODULES:\n"
    "    __import__(m); print(m, sys.modules[m].__file__.rsplit('.', 1)[-1])\n"
)


def environment(tree: Path, **settings: str) -> dict[str, str]:
    """This process's environment for a run on ``tree`` (without a DBMESH_NATIVE of its own:
    scripts/test.sh runs some of these tests with DBMESH_NATIVE=0)."""
    inherited = {k: v for k, v in os.environ.items() if k != "DBMESH_NATIVE"}
    return {**inherited, "PYTHONPATH": str(tree), **settings}


def loaded_forms(tree: Path, **settings: str) -> tuple[dict[str, str], str]:
    """How each hot-path module loads in a fresh interpreter on ``tree``, and its stderr."""
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=tree,
                         env=environment(tree, **settings), check=True)
    return dict(line.split() for line in run.stdout.splitlines()), run.stderr


def test_the_suite_runs_the_compiled_modules(proxy):
    """scripts/setup.sh builds them; the sidecar processes of this suite run them (unless the
    run is the sources-only pass of scripts/test.sh), and a sidecar says at start which."""
    if os.environ.get("DBMESH_NATIVE") == "0":
        assert native.compiled_modules() == []
        assert "hot-path modules run as Python sources" in proxy.log()
        return
    assert not native.stale_modules(), "compiled modules out of date: run python -m dbmesh native build"
    assert native.compiled_modules() == list(native.MODULES)
    assert native.status() == "hot-path modules compiled (mypyc)"
    assert "INFO dbmesh.server hot-path modules compiled (mypyc)" in proxy.log()


@pytest.fixture
def built_copy(tmp_path) -> Path:
    """A copy of the dbmesh package with its compiled modules, to edit."""
    if native.stale_modules():
        pytest.fail("compiled modules out of date or not built: run python -m dbmesh native build")
    shutil.copytree(ROOT / "dbmesh", tmp_path / "dbmesh", ignore=shutil.ignore_patterns("__pycache__"))
    for package in ("sharding", "txn", "shadow"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_an_edited_source_is_never_shadowed_by_its_old_build(built_copy):
    forms, _ = loaded_forms(built_copy)
    assert set(forms.values()) == {"so"}
    fast_lane = built_copy / "dbmesh" / "frontend" / "fast_lane.py"
    fast_lane.write_text(fast_lane.read_text() + "\n# an edit after the build\n")
    forms, stderr = loaded_forms(built_copy)
    # All of them from source, not only the edited one: compiled and interpreted halves of
    # the group never mix.
    assert set(forms.values()) == {"py"}, forms
    assert "dbmesh.frontend.fast_lane changed since the compiled modules were built" in stderr
    assert "python -m dbmesh native build" in stderr


def test_dbmesh_native_0_runs_the_sources(built_copy):
    forms, stderr = loaded_forms(built_copy, DBMESH_NATIVE="0")
    assert set(forms.values()) == {"py"}, forms
    assert "RuntimeWarning" not in stderr  # asked for: no warning


def test_status_names_the_sources_when_nothing_is_built(built_copy):
    run = subprocess.run([sys.executable, "-m", "dbmesh", "native", "clean"], cwd=built_copy,
                         env=environment(built_copy), check=True)
    assert run.returncode == 0
    assert not list(built_copy.rglob("*.so"))
    forms, stderr = loaded_forms(built_copy)
    assert set(forms.values()) == {"py"}
    assert "RuntimeWarning" not in stderr
    status = subprocess.run([sys.executable, "-m", "dbmesh", "native"], cwd=built_copy, capture_output=True,
                            text=True, env=environment(built_copy), check=True)
    assert status.stdout.strip() == ("hot-path modules run as Python sources "
                                     "(build them: python -m dbmesh native build)")


def test_clean_also_removes_the_build_of_a_module_no_longer_compiled(built_copy):
    """Python imports an extension before the source beside it: a module dropped from
    MODULES must not go on running its old build."""
    leftover = built_copy / "sharding" / "merge.cpython-311-x86_64-linux-gnu.so"
    shutil.copy(next((built_copy / "sharding").glob("plan_cache.*.so")), leftover)
    run = subprocess.run([sys.executable, "-m", "dbmesh", "native", "clean"], cwd=built_copy,
                         env=environment(built_copy), check=True)
    assert run.returncode == 0
    assert not leftover.exists()
