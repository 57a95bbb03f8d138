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


# ---- layers inside the packages (issue: domain core) --------------------------------------------------

# The domain core: pure rules and books, called by the live gateway and the backtester alike.
DOMAIN = [
    "common/orders.py",
    "common/risk_rules.py",
    "common/portfolio.py",
    "common/market_clock.py",
    "common/books.py",
    "common/krx.py",
    "common/calendar.py",
    "common/views.py",
    "common/costs.py",
    "common/ids.py",
    "common/enums.py",
    "common/errors.py",
    "common/clock.py",
]
IO = {
    "zmq",
    "httpx",
    "apsw",
    "aiohttp",
    "websockets",
    "asyncio",
    "socket",
    "subprocess",
    "sqlite3",
    "requests",
    "filelock",
}


def all_imports(path: Path) -> set[str]:
    """Every module a file imports, dotted (ours and third-party)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_the_domain_core_does_no_io() -> None:
    bad = [f"{f} imports {m}" for f in DOMAIN for m in all_imports(ROOT / f) if m.split(".")[0] in IO]
    assert not bad, "domain modules must stay pure:\n" + "\n".join(bad)


def test_the_twin_never_imports_the_kis_client() -> None:
    """The twin is an oracle for the client: it must not share the client's code (kis/sim → kis.sim, common)."""
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for f in package_files("kis/sim")
        for m in all_imports(f)
        if m.split(".")[0] == "kis" and not m.startswith("kis.sim")
    ]
    assert not bad, "\n".join(bad)


def test_the_console_and_cli_speak_only_the_wire_protocol() -> None:
    """Operator tools reach a running gateway through its protocol, never its modules or its store
    (ktrader trace --offline, for a gateway that is not running, is the one documented exception)."""
    files = [*package_files("tools/top"), ROOT / "tools/ops/status.py", ROOT / "tools/ops/trace.py"]
    web = ROOT / "tools" / "web"
    if web.exists():
        files += package_files("tools/web")
    bad = []
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node in tree.body:  # module level: the offline reader imports inside its function
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            bad += [f"{f.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in {"server", "apsw"}]
    assert not bad, "\n".join(bad)


def test_every_request_names_its_reply() -> None:
    from typing import get_args

    from common.schema import REPLY_TO, Query, Request

    assert set(get_args(Request)) - set(REPLY_TO) == {Query}  # a query's reply depends on its kind


def test_an_agent_process_imports_only_what_an_agent_needs() -> None:
    """`ktrader agent run` goes to agent/main.py without the CLI; nothing on that path may pull in the
    console, the twin, the backtester, HTTP clients or asyncio (each costs every agent process MBs:
    zmq.utils.monitor alone brought asyncio and ssl, ~4 MB)."""
    import subprocess
    import sys

    code = (
        "import sys, agent.main, agent.runtime, agent.client, agent.strategies.ma_cross; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    loaded = set(out.stdout.split())
    heavy = {"asyncio", "ssl", "typer", "rich", "textual", "httpx", "aiohttp", "apsw", "server", "kis", "tools"}
    assert not loaded & heavy, sorted(loaded & heavy)
