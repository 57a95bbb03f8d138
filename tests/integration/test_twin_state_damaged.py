"""The embedded twin's state file cut short (a crash or a power loss while it was written: it was written without an
fsync) stopped every start with "unexpected JSONDecodeError", exit 1, the file unnamed (a hunt). The start now says
which file and what to do, exit 2 (bad configuration), no traceback; and the file is fsynced before it replaces the
last one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import Procs, wait_for

pytestmark = pytest.mark.integration


def test_a_cut_short_twin_state_is_named_with_what_to_do(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    gw = procs.start("gateway", "--run-dir", str(run), log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 60, what="the gateway on its embedded twin")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(30) == 0
    state = run / "db" / "twin-state.json"
    whole = state.read_text(encoding="utf-8")
    state.write_text(whole[: len(whole) // 2], encoding="utf-8")  # what a crash mid-write left
    again = procs.start("gateway", "--run-dir", str(run), log_name="gateway2")
    assert again.wait(60) == 2
    said = procs.log(again)
    assert str(state) in said and "move it aside" in said and "Traceback" not in said, said
