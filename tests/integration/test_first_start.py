"""A gateway's first start on a run folder, and starts that must not go on: real processes (the
gateway, a KIS twin process). A folder used on the twin is refused for a paper account (exit 2, one
line, before any KIS call); a paper first start approves no card by itself and says how to; an
endpoint that cannot be bound is told (exit 2) before the broker starts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common import approvals
from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, credentials_env
from kis.startup import StartExit
from tests.conftest import ROOT, Procs, wait_for
from tools.ops.procs import child_env, ktrader_cmd, stop_groups, twin_args

pytestmark = pytest.mark.integration


def start_twin(procs: Procs, tmp: Path) -> dict[str, str]:
    log = open(tmp / "twin.err", "wb")
    p = subprocess.Popen(
        ktrader_cmd(*twin_args(5, "--tick-interval", "0")),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        env=child_env(),
        start_new_session=True,
    )
    procs.procs.append(p)
    return json.loads(p.stdout.readline())  # type: ignore[union-attr]


def paper(info: dict[str, str], cards_dir: Path | None = None) -> tuple[str, dict[str, str]]:
    """A paper config on the twin's paper flavour, and its paper credentials."""
    toml = (
        f'master_url = ""\n[broker]\nenv = "paper"\nrest_url = "{info["paper_rest_url"]}"\n'
        f'ws_url = "{info["ws_url"]}"\nstart_retries = 0\n'
    )
    if cards_dir is not None:
        toml += f'[trust]\ncards_dir = "{cards_dir}"\n'
    env = {
        **credentials_env(info),
        ENV_APP_KEY: info["paper_app_key"],
        ENV_APP_SECRET: info["paper_app_secret"],
        ENV_ACCOUNT: info["paper_account"],
    }
    return toml, env


def run_gateway(
    tmp: Path, run: Path, toml: str | None, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tools.cli", "gateway", "--run-dir", str(run), *args]
    if toml is not None:
        cfg = tmp / "gateway.toml"
        cfg.write_text(toml)
        cmd += ["--config", str(cfg)]
    e = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    e.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=90)


def keys_init(run: Path) -> None:
    """`ktrader keys init` on `run`: a folder set up for a gateway with endpoints of its own choosing."""
    keys = subprocess.run(
        [sys.executable, "-m", "tools.cli", "keys", "init", "--run-dir", str(run)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr


def refused(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, the operator's lines at the end: one `error:` line (and maybe its hint)."""
    assert out.returncode == StartExit.CONFIG, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    err = lines[first:]
    assert 1 <= len(err) <= 2, err
    text = " ".join(err)
    for n in needles:
        assert n in text, (n, err)
    return text


def test_a_twin_run_folder_is_refused_for_a_paper_account(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path)
    run = tmp_path / "run"
    # the twin (env sim, embedded) trades on run/ first
    gw = procs.start("gateway", "--run-dir", str(run), log_name="sim")
    wait_for(lambda: (run / "gateway.json").exists(), 30, what="sim gateway up")
    stop_groups([gw], grace_s=10)
    # the same folder for a paper account: its orders, P&L, budgets, halts must not carry over
    toml, env = paper(info)
    out = run_gateway(tmp_path, run, toml, env)
    text = refused(out, "the KIS twin", "paper account", "ktrader reset", "--run-dir")
    assert info["paper_account"] not in text and info["paper_account"][:8] not in out.stderr  # masked only
    assert "KIS REST ready" not in out.stderr  # refused before any KIS call (no token issued)
    # another folder works, and the paper folder is refused for the twin in turn
    other = tmp_path / "paper-run"
    gw = procs.start(
        "gateway", "--config", str(tmp_path / "gateway.toml"), "--run-dir", str(other), log_name="paper", env=env
    )
    wait_for(lambda: (other / "gateway.json").exists(), 30, what="paper gateway up")
    stop_groups([gw], grace_s=10)
    refused(run_gateway(tmp_path, other, None, {}), "paper account", "this start is for the KIS twin")


def test_a_paper_first_start_approves_no_card_and_says_how(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path)
    cards = tmp_path / "cards"
    cards.mkdir()
    for name in ("ma_cross.toml", "pair_spread.toml"):  # live sample cards, with budgets
        shutil.copy(ROOT / "cards" / name, cards / name)
    toml, env = paper(info, cards)
    cfg = tmp_path / "paper.toml"
    cfg.write_text(toml)
    run = tmp_path / "run"
    gw = procs.start("gateway", "--config", str(cfg), "--run-dir", str(run), log_name="gateway", env=env)
    wait_for(lambda: (run / "gateway.json").exists(), 30, what="paper gateway up")
    assert not approvals.load(run).cards  # nothing approved behind the operator's back
    log = procs.log(gw)
    assert "no card is approved" in log, log
    assert f"ktrader cards approve --run-dir {run} {cards}/CARD.toml" in log, log
    assert "ma_cross.toml, pair_spread.toml" in log, log
    stop_groups([gw], grace_s=10)


def test_the_twin_first_start_still_approves_the_cards(tmp_path: Path, procs: Procs) -> None:
    """The demo and the three-terminal way rely on it."""
    run = tmp_path / "run"
    gw = procs.start("gateway", "--run-dir", str(run), log_name="sim")
    wait_for(lambda: (run / "gateway.json").exists(), 30, what="sim gateway up")
    assert len(approvals.load(run).cards) == len(list((ROOT / "cards").glob("*.toml")))
    stop_groups([gw], grace_s=10)


def test_an_ipc_path_too_long_is_told_before_the_broker_starts(tmp_path: Path) -> None:
    run = tmp_path / ("r" * 120)
    out = run_gateway(tmp_path, run, None, {})
    refused(out, "ipc path is too long", "--run-dir")
    assert "embedded KIS twin" not in out.stderr and "unexpected" not in out.stderr  # the broker never started


def test_a_tcp_port_in_use_is_told_before_the_broker_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    keys_init(run)
    with socket.socket() as busy, socket.socket() as free:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        out = run_gateway(
            tmp_path,
            run,
            None,
            {},
            "--router",
            f"tcp://127.0.0.1:{busy.getsockname()[1]}",
            "--pub",
            f"tcp://127.0.0.1:{free_port}",
        )
    refused(out, "port is in use", "--router/--pub")
    assert "embedded KIS twin" not in out.stderr


def test_an_ipc_path_another_process_listens_on_is_told_before_the_broker_starts(tmp_path: Path) -> None:
    """(a hunt) ZMQ's bind of an ipc path in use does not fail: it takes it from its listener. A second gateway
    (another run folder, the same endpoints) started cleanly and took the first one's sockets: the operator could
    no longer reach the first, not even to halt it. Refused now; a stale socket file (its gateway died) is free."""
    run = tmp_path / "run"
    keys_init(run)
    path = tmp_path / "r.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:  # the running gateway's router, say
        other.bind(str(path))
        other.listen()
        out = run_gateway(tmp_path, run, None, {}, "--router", f"ipc://{path}", "--pub", f"ipc://{tmp_path / 'p.sock'}")
    refused(out, f"ipc://{path}", "in use by another process", "--router/--pub")
    assert path.exists()  # not taken from it
