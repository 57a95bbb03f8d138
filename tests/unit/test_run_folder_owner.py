"""A run folder another user could fill is not trusted: the gateway refuses to start in one (their
gateway.json would take this user's agents, orders and kill switch), and tools and agents refuse a
gateway.json another user could have written. The user here is uid 1001 (os.getuid patched: the suite runs
as root, whom every user's folder is trusted by); folders are given to others with chown (root only)."""

from __future__ import annotations

import grp
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
ME, OTHER = 1001, 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch) -> int:
    """This process as uid ME for the checks (its files chowned to ME by the tests)."""
    monkeypatch.setattr(os, "getuid", lambda: ME)
    return ME


def _folder(parent: Path, name: str, uid: int, gid: int, mode: int = 0o700) -> Path:
    """A folder in `parent` (made the user's) owned by uid:gid with `mode`."""
    os.chown(parent, ME, ME)
    folder = parent / name
    folder.mkdir()
    os.chown(folder, uid, gid)
    folder.chmod(mode)
    return folder


def test_a_folder_in_a_world_writable_parent_is_refused_and_a_sticky_one_passes(tmp_path: Path) -> None:
    open_parent = tmp_path / "shared"
    open_parent.mkdir()
    open_parent.chmod(0o777)  # anyone may rename what is in it
    with pytest.raises(ConfigError, match="writable by every user"):
        check_run_dir(open_parent / "run")
    cp = subprocess.run(  # the gateway itself: one line, exit 2, nothing written there
        [sys.executable, "-m", "tools", "gateway", "--run-dir", str(open_parent / "run2"), "--broker", "x:y"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert cp.returncode == 2 and "writable by every user" in cp.stderr and "Traceback" not in cp.stderr
    assert not (open_parent / "run2" / "gateway.json").exists()
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
    assert read_info(run, trusted_only=False) == INFO  # (the gateway reading its own file back)
    path.chmod(0o600)
    run.chmod(0o777)  # the folder: anyone could put their own file there
    with pytest.raises(ConnectionFileError, match="not trusted"):
        read_info(run)


@as_root
def test_a_run_folder_another_user_made_is_refused(tmp_path: Path, user: int) -> None:
    run = _folder(tmp_path, "run", OTHER, OTHER, 0o777)  # made first by another user (nobody)
    with pytest.raises(ConfigError, match="belongs to another user"):
        check_run_dir(run)
    os.chown(run, user, user)
    run.chmod(0o700)
    check_run_dir(run)  # the user's own


@as_root
def test_a_link_of_another_user_on_the_way_is_refused(tmp_path: Path, user: int) -> None:
    """They may point it elsewhere at any time: at their own folder, with their gateway.json in it."""
    mine = _folder(tmp_path, "mine", user, user)
    link = tmp_path / "run"
    link.symlink_to(mine)
    os.lchown(link, OTHER, OTHER)
    assert "is a link of another user" in others_can_replace(link)
    os.lchown(link, user, user)
    assert others_can_replace(link) == ""


@as_root
def test_a_folder_writable_by_a_shared_group_is_refused(tmp_path: Path, user: int) -> None:
    shared = grp.getgrnam("users").gr_gid if "users" in {g.gr_name for g in grp.getgrall()} else 100
    run = _folder(tmp_path, "run", user, shared, 0o2775)
    assert "writable by group" in others_can_replace(run)
    run.chmod(0o2755)
    assert others_can_replace(run) == ""


@as_root
def test_a_gateway_file_of_another_user_is_not_trusted(tmp_path: Path, user: int) -> None:
    run = _folder(tmp_path, "run", user, user)
    path = write_info(run, INFO)
    os.chown(path, OTHER, OTHER)
    with pytest.raises(ConnectionFileError, match="belongs to another user"):
        read_info(run)
    os.chown(path, user, user)
    assert read_info(run) == INFO
