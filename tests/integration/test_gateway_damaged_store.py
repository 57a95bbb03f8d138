"""`ktrader gateway` on a run folder whose store is damaged stops at once with the file named and what to do
(exit 2, no traceback, not "unexpected"). A real gateway process on the fake broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kis.startup import StartExit
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["db/gateway.sqlite", "data/bars.sqlite"])
def test_gateway_on_a_store_of_random_bytes_names_it_and_exits(tmp_path: Path, name: str) -> None:
    run = tmp_path / "run"
    store = run / name
    store.parent.mkdir(parents=True)
    store.write_bytes(os.urandom(8192))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "tools", "gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == StartExit.CONFIG, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "unexpected" not in out.stderr, out.stderr
    assert f"error: store: {store} is damaged" in out.stderr, out.stderr
    if name.startswith("db/"):  # the gateway's books: the whole run folder can be archived
        assert f"ktrader reset --run-dir {run}" in out.stderr, out.stderr
    else:
        assert "the bars it recorded left behind" in out.stderr, out.stderr
