"""A KIS trade print (kis.port.Trade) for tests: only what a test varies, the rest zero."""

from __future__ import annotations

from kis.port import Trade


def trade(code: str, time: str, price: int, qty: int, cum: int, *, bid: int = 0, ask: int = 0, date: str = "") -> Trade:
    return Trade(
        code=code,
        time=time,
        price=price,
        qty=qty,
        side=1,
        cum_volume=cum,
        cum_value=0,
        open=0,
        high=0,
        low=0,
        change=0,
        ask1=ask,
        bid1=bid,
        date=date,
    )
