"""DESIGN.md §2: common imports nothing of ours; kis → common; agent → common; server → kis, common;
tools may import anything. An agent never imports server or kis."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"common", "kis", "server", "agent", "tools"}
ALLOWED = {
    "common": set(),
    "kis": {"common"},
    "agent": {"common"},
    "server": {"kis", "common"},
    "tools": OURS,
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


def package_files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_dependency_rule(pkg: str) -> None:
    files = package_files(pkg)
    assert files, f"no python files in {pkg}/"
    bad = []
    for f in files:
        for dep in imports_of(f) - {pkg} - ALLOWED[pkg]:
            bad.append(f"{f.relative_to(ROOT)} imports {dep}")
    assert not bad, "dependency rule broken:\n" + "\n".join(bad)


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import server.gateway\nfrom kis.port import BrokerPort\nfrom . import sibling\n")
    assert imports_of(f) == {"server", "kis"}
