"""python-kis (Soju06/python-kis 2.1.6, unmodified) driven against the twin.

python-kis hard-codes the KIS domains as module constants (`pykis.__env__`), copied into
`pykis.kis.REAL_DOMAIN` and `pykis.client.websocket.WEBSOCKET_REAL_DOMAIN` at import; the test
re-points those two names at the twin with monkeypatch. python-kis ≤ 2.1.6 parses only the legacy
23-field notice, so the twin is switched to its legacy notice layout first.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import httpx
import pytest

from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig

pykis = pytest.importorskip("pykis")
pytestmark = pytest.mark.integration


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_python_kis_token_quote_balance_buy_notice_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    import pykis.client.websocket as pk_ws
    import pykis.kis as pk_kis
    from pykis import KisAuth, PyKis

    with TwinThread(TwinConfig(seed=21, tick_interval=0, rate_real=1000)) as tw:
        monkeypatch.setattr(pk_kis, "REAL_DOMAIN", tw.rest_url)
        monkeypatch.setattr(pk_ws, "WEBSOCKET_REAL_DOMAIN", tw.ws_url)
        httpx.post(tw.admin_url + "/admin/faults/legacy-notice", json={"on": True})
        kis = PyKis(KisAuth(id=tw.hts_id, account=tw.account, appkey=tw.app_key, secretkey=tw.app_secret,
                            virtual=False), keep_token=False)
        try:
            stock = kis.stock("005930")
            quote = stock.quote()
            assert quote.price > 0 and quote.low_limit < quote.price < quote.high_limit
            acct = kis.account()
            assert acct.balance("KR").deposits["KRW"].amount == 100_000_000
            events: list[object] = []
            ticket = acct.on("execution", lambda sender, e: events.append(e.response))
            # wait for the twin to have registered the notice subscription (the ack arrived)
            assert _wait(lambda: any(tr.id == "H0STCNI0" for tr in kis.websocket._registered_subscriptions))
            book = stock.orderbook()
            order = stock.buy(price=int(book.bids[0].price) - 1000, qty=1)
            assert _wait(lambda: len(events) >= 1)  # the acceptance notice
            pending = acct.pending_orders("KR")
            assert [o.order_number.number for o in pending.orders] == [order.number]
            order.cancel()
            assert _wait(lambda: not acct.pending_orders("KR").orders)
            filled = stock.buy(price=int(book.asks[0].price), qty=2)
            assert _wait(lambda: len(events) >= 4)  # cancel acceptance + buy acceptance + fill
            balance = acct.balance("KR")
            assert [s.qty for s in balance.stocks if s.symbol == "005930"] == [2]
            daily = acct.daily_orders(start=dt.date.today() - dt.timedelta(days=3), country="KR")
            assert filled.number in [o.order_number.number for o in daily.orders]
            ticket.unsubscribe()
        finally:
            kis.websocket.disconnect()
