"""`ktrader top` closed by its terminal (SIGHUP: a window closed, an SSH drop) or a SIGTERM stops the agents it started,
as a quit does (a hunt): Python's default for those signals ended the console at once, its `finally` never ran, and
the agents it had started (in their own sessions, so the hangup never reached them) went on trading with nobody to
stop or restart them. A second signal during that stop (a hangup's second, a Ctrl-C then the hangup) waits for its
end (reviews). The console's window needs a terminal, so a stand-in runs in its place here; the signals, the
process and `run_top`'s way out are the real ones."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration

CONSOLE = """
import sys, time
from pathlib import Path
from tools.top import app as top

run = Path(sys.argv[1])


class Supervisor:  # records what run_top asks of it at its end
    def __init__(self, run_dir):
        pass

    def stop_all(self):
        (run / "stopping").write_text("yes")
        deadline = time.monotonic() + 20
        while not (run / "go-on").exists() and time.monotonic() < deadline:  # (the test's second signal comes now)
            time.sleep(0.01)
        (run / "agents-stopped").write_text("yes")


class Window:  # the console's window, open until the terminal goes
    def __init__(self, *a, **k):
        pass

    def run(self):
        (run / "console-up").write_text("yes")
        time.sleep(60)


top.Supervisor, top.TopApp = Supervisor, Window
top.run_top(run)
"""


@pytest.mark.parametrize(
    ("sig", "then"),
    [(signal.SIGHUP, signal.SIGHUP), (signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGHUP)],
)
def test_a_closed_terminal_stops_the_agents_the_console_started(
    tmp_path: Path, sig: signal.Signals, then: signal.Signals
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    p = subprocess.Popen([sys.executable, "-c", CONSOLE, str(run)], cwd=ROOT)
    try:
        wait_for(lambda: (run / "console-up").exists(), 20, what="the console up")
        p.send_signal(sig)
        wait_for(lambda: (run / "stopping").exists(), 20, what="the agents' stop under way")
        p.send_signal(then)  # a hangup often comes twice, a Ctrl-C of the impatient: the stop goes on to its end
        (run / "go-on").write_text("yes")
        assert p.wait(20) != 0
        assert (run / "agents-stopped").exists(), "the console ended without stopping its agents"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
