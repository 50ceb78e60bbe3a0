"""The dependency rules between Parley's packages, read from the source: ``api`` → ``shared`` ←
``worker``, with ``parley`` (the command line) as the composition root above them all; torch and
transformers only in ``worker``; at most 10 loose modules at the top of ``shared/`` and ``api/``
(the rest live in packages named for their role)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package → the top-level names its modules may never import
FORBIDDEN = {
    "shared": {"api", "worker", "parley", "bench", "tests", "torch", "transformers"},
    "api": {"worker", "parley", "bench", "tests", "torch", "transformers"},
    "worker": {"api", "parley", "bench", "tests"},
}


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
