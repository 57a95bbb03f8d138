"""python-kis (Soju06/python-kis 2.1.6, unmodified) driven against the twin, in real and in virtual
(paper) mode, with its default calls (`country` never passed, so the account views also ask the
overseas endpoints).

python-kis hard-codes the KIS domains as module constants (`pykis.__env__`), copied into
`pykis.kis.REAL_DOMAIN`/`VIRTUAL_DOMAIN` and `pykis.client.websocket.WEBSOCKET_*_DOMAIN` at import;
the test re-points those names at the twin with monkeypatch. python-kis ≤ 2.1.6 parses only the
legacy 23-field notice, so the twin is switched to its legacy notice layout first.

Virtual mode is python-kis's paper mode: quotes, charts and live prices use the real key on the real
domain (its approval key asked of the paper domain), orders and account views the paper key.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
from collections.abc import Callable

import httpx
import pytest

from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig

pykis = pytest.importorskip("pykis")
pytestmark = pytest.mark.integration

SESSION = (dt.time(9, 0), dt.time(15, 20))  # the open clock's synthetic session day


def _wait(cond: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.05)
    return cond()


def _registered(kis: object) -> set[str]:
    """TR ids whose subscribe ack python-kis received, on its socket and its paper socket."""
    ws = kis.websocket  # type: ignore[attr-defined]
    clients = [ws] + ([ws._primary_client] if ws._primary_client is not None else [])
    return {tr.id for c in clients for tr in c._registered_subscriptions}


def _in_session(t: dt.time) -> bool:
    return SESSION[0] <= t <= SESSION[1]


# python-kis's execution ticket leaves its overseas half (H0GSCNI*) to be released on collection
@pytest.mark.filterwarnings("ignore:Event ticket .* was not explicitly unsubscribed:UserWarning")
@pytest.mark.parametrize("virtual", [False, True], ids=["real", "virtual"])
def test_python_kis_default_flows(monkeypatch: pytest.MonkeyPatch, virtual: bool) -> None:
    import pykis.client.websocket as pk_ws
    import pykis.kis as pk_kis
    from pykis import KisAuth, PyKis

    with TwinThread(TwinConfig(seed=21, tick_interval=0, rate_real=1000, rate_paper=1000)) as tw:
        monkeypatch.setattr(pk_kis, "REAL_DOMAIN", tw.rest_url)
        monkeypatch.setattr(pk_kis, "VIRTUAL_DOMAIN", tw.paper_rest_url)
        monkeypatch.setattr(pk_ws, "WEBSOCKET_REAL_DOMAIN", tw.ws_url)
        monkeypatch.setattr(pk_ws, "WEBSOCKET_VIRTUAL_DOMAIN", tw.ws_url)
        httpx.post(tw.admin_url + "/admin/faults/legacy-notice", json={"on": True})
        real = KisAuth(id=tw.hts_id, account=tw.account, appkey=tw.app_key, secretkey=tw.app_secret, virtual=False)
        if virtual:
            paper = KisAuth(
                id=tw.hts_id,
                account=tw.paper_account,
                appkey=tw.paper_app_key,
                secretkey=tw.paper_app_secret,
                virtual=True,
            )
            kis = PyKis(real, paper, keep_token=False)
        else:
            kis = PyKis(real, keep_token=False)
        assert kis.virtual is virtual
        try:
            stock = kis.stock("005930")
            quote = stock.quote()
            assert quote.price > 0 and quote.low_limit < quote.price < quote.high_limit

            # live prices over the websocket (virtual mode: the real key's approval from the paper domain)
            prices: list[object] = []
            price_ticket = stock.on("price", lambda sender, e: prices.append(e.response))
            assert _wait(lambda: "H0STCNT0" in _registered(kis))
            httpx.post(tw.admin_url + "/admin/market/step", json={"n": 30, "codes": ["005930"]}).raise_for_status()
            assert _wait(lambda: prices), "no live price reached python-kis"
            assert prices[0].price > 0 and _in_session(prices[0].time_kst.time())

            # charts: a year of days (≤ 100 rows a call, so python-kis pages), today's minutes (first
            # call FID_INPUT_HOUR_1=000000 = the latest), times inside the session
            days = stock.chart("1y").bars
            history = tw.run(lambda: len(tw.server.twin.exchange.stocks["005930"].history))
            assert len(days) == len({b.time.date() for b in days}) == history + 1 > 100  # + today's bar
            assert [b.time for b in days] == sorted(b.time for b in days)
            minutes = stock.chart(period=1).bars
            assert minutes and all(_in_session(b.time_kst.time()) for b in minutes)

            acct = kis.account()
            balance = acct.balance()  # domestic + overseas (empty) views merged
            assert balance.deposits["KRW"].amount == 100_000_000 and not balance.stocks
            events: list[object] = []
            exec_ticket = acct.on("execution", lambda sender, e: events.append(e.response))
            notice_tr = "H0STCNI9" if virtual else "H0STCNI0"
            # registered = the twin's ack (with the notice AES key) arrived; virtual mode's notices
            # come on python-kis's second socket (the paper key's)
            assert _wait(lambda: notice_tr in _registered(kis))

            book = stock.orderbook()
            resting = stock.buy(price=int(book.bids[0].price) - 1000, qty=1)
            assert _wait(lambda: len(events) >= 1)  # the acceptance notice
            pending = acct.pending_orders()
            if virtual:  # python-kis asks only the overseas endpoint in virtual mode (its choice)
                assert list(pending.orders) == []
            else:
                assert [o.order_number.number for o in pending.orders] == [resting.number]
                assert _in_session(pending.orders[0].time_kst.time())
            resting.cancel()
            filled = stock.buy(price=int(book.asks[0].price), qty=2)
            assert _wait(lambda: len(events) >= 4)  # cancel acceptance + buy acceptance + fill

            def held() -> list[int]:
                return [int(s.qty) for s in acct.balance().stocks if s.symbol == "005930"]

            assert _wait(lambda: held() == [2]), held()
            if not virtual:
                assert not acct.pending_orders().orders
            daily = acct.daily_orders(start=dt.date.today() - dt.timedelta(days=3))  # domestic + overseas
            by_number = {o.order_number.number: o for o in daily.orders}
            assert {resting.number, filled.number} <= set(by_number)
            assert by_number[filled.number].executed_qty == 2
            assert all(_in_session(o.time_kst.time()) for o in daily.orders), [o.time_kst for o in daily.orders]
            exec_ticket.unsubscribe()
            price_ticket.unsubscribe()
            del exec_ticket, price_ticket
            gc.collect()  # python-kis releases the tickets' inner parts (H0GSCNI0) on collection: while the twin is up
        finally:
            kis.websocket.disconnect()
