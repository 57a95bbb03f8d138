"""A run folder another user could fill is not trusted: the gateway refuses to start in one (their
gateway.json would take this user's agents, orders and kill switch), and tools and agents refuse a
gateway.json another user could have written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from common.connection import ConnectionFileError, GatewayInfo, read_info, write_info
from common.private import others_can_replace
from server.app import check_run_dir

ROOT = Path(__file__).resolve().parents[2]
INFO = GatewayInfo(router="ipc:///x", pub="ipc:///y", key="00" * 32, pid=1, session="s", started_ns=1)
as_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")


def test_a_folder_in_a_world_writable_parent_is_refused_and_a_sticky_one_passes(tmp_path: Path) -> None:
    open_parent = tmp_path / "shared"
    open_parent.mkdir()
    open_parent.chmod(0o777)  # anyone may rename what is in it
    with pytest.raises(ConfigError, match="writable by every user"):
        check_run_dir(open_parent / "run")
    open_parent.chmod(0o1777)  # sticky, as /tmp: only the owner may rename its entries
    check_run_dir(open_parent / "run")
    assert others_can_replace(open_parent / "run") == ""


def test_a_gateway_file_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = write_info(run, INFO)
    assert read_info(run) == INFO
    path.chmod(0o646)
    with pytest.raises(ConnectionFileError, match="writable by every user: not trusted"):
        read_info(run)
    path.chmod(0o600)
    run.chmod(0o777)  # the folder: anyone could put their own file there
    with pytest.raises(ConnectionFileError, match="not trusted"):
        read_info(run)


@as_root
def test_a_run_folder_another_user_made_is_refused_at_the_gateways_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o777)
    os.chown(run, 65534, 65534)  # made first by another user (nobody)
    with pytest.raises(ConfigError, match="belongs to another user"):
        check_run_dir(run)
    cp = subprocess.run(
        [sys.executable, "-m", "tools", "gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert cp.returncode == 2, cp.stderr
    assert "belongs to another user" in cp.stderr and "Traceback" not in cp.stderr
    assert not (run / "gateway.json").exists()


@as_root
def test_a_gateway_file_of_another_user_is_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = write_info(run, INFO)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConnectionFileError, match="belongs to another user"):
        read_info(run)
    cp = subprocess.run(
        [sys.executable, "-m", "tools", "status", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert cp.returncode != 0 and "not trusted" in cp.stdout + cp.stderr and "Traceback" not in cp.stderr
