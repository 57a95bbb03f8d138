"""The signals that ask a ktrader process to stop cleanly: SIGINT, SIGTERM, and SIGHUP (a closed terminal, an SSH
drop: its default ended the process as a kill -9 would) unless the process was started to outlive its terminal
(`nohup`, which leaves SIGHUP ignored: a handler would undo that, and a gateway started so would stop at the hangup)."""

from __future__ import annotations

import signal


def stop_signals(interrupt: bool = True) -> tuple[signal.Signals, ...]:
    """The signals to handle as a stop request (`interrupt`: SIGINT too)."""
    hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return ((signal.SIGINT,) if interrupt else ()) + (signal.SIGTERM, *hangup)
