"""The dependency rules between Parley's packages, read from the source: ``api`` → ``shared`` ←
``worker``, with ``parley`` (the command line) as the composition root above them all; torch and
transformers only in ``worker``; at most 10 loose modules at the top of ``shared/`` and ``api/``
(the rest live in packages named for their role); pipecat only in ``parley/pipecat.py``, the
Pipecat extra, which is a client of the HTTP API and imports nothing of Parley's."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package → the top-level names its modules may never import
FORBIDDEN = {
    "shared": {"api", "worker", "parley", "bench", "tests", "torch", "transformers"},
    "api": {"worker", "parley", "bench", "tests", "torch", "transformers"},
    "worker": {"api", "parley", "bench", "tests"},
}

# The Pipecat extra: the one module that imports pipecat, and what else it may import besides
# the standard library (loguru is pipecat's own logger).
PIPECAT_EXTRA = "parley/pipecat.py"
PIPECAT_EXTRA_MAY_IMPORT = {"httpx", "numpy", "pipecat", "loguru"}


def imported_roots(path: Path) -> set[str]:
    """The top-level names ``path`` imports, at any depth (inside functions too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_its_layer_allows(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    broken = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in modules
    }
    assert {path: names for path, names in broken.items() if names} == {}


def test_the_rule_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from worker.engine import csm\n    import torch.nn\n")
    assert imported_roots(module) == {"worker", "torch"}


@pytest.mark.parametrize("package", ["shared", "api"])
def test_at_most_ten_loose_modules(package: str) -> None:
    loose = [p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= 10, sorted(loose)


def test_only_the_pipecat_extra_imports_pipecat() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ["api", "shared", "worker", "parley", "bench"]
        for path in sorted((ROOT / package).rglob("*.py"))
        if "pipecat" in imported_roots(path)
    }
    assert importers == {PIPECAT_EXTRA}


def test_the_pipecat_extra_is_only_a_client_of_the_http_api() -> None:
    roots = imported_roots(ROOT / PIPECAT_EXTRA)
    assert roots - sys.stdlib_module_names - PIPECAT_EXTRA_MAY_IMPORT == set()
