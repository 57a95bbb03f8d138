"""A store written by the version before 928e6b6 where the operator PAUSED alpha (HALTED, soft: its resting
orders kept working, e.g. a take-profit sell). After the upgrade's first start, cancel_halted treats it as a
halt with cancels: the pause's working orders are cancelled, paged as a gateway fault."""

from __future__ import annotations
import asyncio
from pathlib import Path
from common.enums import AlertKind, TradingState
from tests.unit.test_crash_halt_cancels import resting, restart, at_broker


async def test_legacy_pause(tmp_path: Path) -> None:
    h = await resting(tmp_path)
    broker = h.broker
    with h.store.transaction():  # what the old version's `ktrader control pause --agent alpha` left
        h.store.set_meta("trading_state:alpha", TradingState.HALTED.value)
        h.store.log_operator(1, "ktrader-cli", "pause", "alpha", True, {"result": "alpha is halted"})
    await h.close()
    h2 = await restart(tmp_path, broker)
    try:
        await asyncio.sleep(0.3)
        # a pause written by the older version keeps its working order (as that version did), unpaged
        assert h2.book.orders["alpha-20261120-1"].is_open and at_broker(broker, h2, "alpha-20261120-1")
        assert not h2.alerted(AlertKind.GATEWAY_FAULT)
    finally:
        await h2.close()
