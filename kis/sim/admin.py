"""Admin HTTP API (JSON), on its own port: inspection, external orders, clock moves, prices, faults.

Every endpoint is documented in kis/sim/README.md. Errors come back as `{"error": "..."}` with 400/404.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kis.sim.engine import BookSide
from kis.sim.exchange import OrderRecord
from kis.sim.faults import EXCHANGE_REFUSAL_KINDS, ExchangeRefusal, ReplyMangle, RestDisconnect, RestError
from kis.sim.history_admin import FOLLOWER_HEADER, ClockFollowers, HistoryAdmin
from kis.sim.ledger import Account
from kis.sim.wire import KisError

if TYPE_CHECKING:
    from kis.sim.server import TwinServer


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(doc, ensure_ascii=False), status=status, content_type="application/json")


def _err(msg: str, status: int = 400) -> web.Response:
    return _json({"error": msg}, status)


def order_view(rec: OrderRecord) -> dict[str, Any]:
    return {
        "odno": rec.odno,
        "account": rec.account_id,
        "day": rec.day.isoformat(),
        "code": rec.code,
        "side": "buy" if rec.side is BookSide.BUY else "sell",
        "ord_dvsn": rec.ord_dvsn,
        "qty": rec.qty,
        "price": rec.price,
        "tmd": rec.tmd,
        "kind": rec.kind.value,
        "orgn_odno": rec.orgn_odno,
        "filled_qty": rec.filled_qty,
        "filled_amt": rec.filled_amt,
        "cancelled_qty": rec.cancelled_qty,
        "moved_qty": rec.moved_qty,
        "expired_qty": rec.expired_qty,
        "rejected_qty": rec.rejected_qty,
        "open_qty": rec.open_qty,
        "external": rec.external,
        "reject_reason": rec.reject_reason,
    }


def account_view(acct: Account, last: dict[str, int]) -> dict[str, Any]:
    return {
        "account": acct.account_id,
        "app_key": acct.app_key,
        "hts_id": acct.hts_id,
        "paper": acct.paper,
        "cash": acct.cash,
        "dnca": acct.dnca,
        "reserved": acct.reserved,
        "orderable_cash": acct.orderable_cash,
        "fees_total": acct.fees_total,
        "initial_cash": acct.initial_cash,
        "moved": acct.moved,
        "holdings": {
            c: {"qty": h.qty, "cost": h.cost, "sellable": h.sellable, "last": last.get(c, 0)}
            for c, h in acct.holdings.items()
        },
    }


MAX_MONEY = 10**15  # KRW: far above any account, well inside the int64 the wire and the store carry


class AdminApi:
    def __init__(self, server: TwinServer) -> None:
        self.server = server
        self.followers = ClockFollowers()

    @property
    def twin(self):
        return self.server.twin

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_get("/admin/state", self.state)
        r.add_get("/admin/accounts", self.accounts)
        r.add_post("/admin/accounts", self.add_account)
        r.add_get("/admin/accounts/{account}", self.account)
        r.add_get("/admin/accounts/{account}/orders", self.orders)
        r.add_post("/admin/accounts/{account}/money", self.money)
        r.add_post("/admin/accounts/{account}/shares", self.shares)
        r.add_post("/admin/orders", self.external_order)
        # history mode (kis/sim/history_admin.py) has its own clock moves; the others use these
        HistoryAdmin(self.server, self.followers).add_routes(
            r, {"close": self.clock_close, "next-day": self.clock_next_day, "move": self.clock_move}
        )
        r.add_post("/admin/price", self.set_price)
        r.add_post("/admin/halt", self.halt)
        r.add_post("/admin/split", self.split)
        r.add_get("/admin/book/{code}", self.book)
        r.add_post("/admin/market/step", self.step)
        r.add_get("/admin/faults", self.faults)
        r.add_post("/admin/faults/reset", self.faults_reset)
        r.add_post("/admin/faults/ws-drop", self.ws_drop)
        r.add_post("/admin/faults/ws-refuse", self.ws_refuse)
        r.add_post("/admin/faults/sub-refuse", self.sub_refuse)
        r.add_post("/admin/faults/ws-invalid-utf8", self.ws_invalid_utf8)
        r.add_post("/admin/faults/rest-disconnect", self.rest_disconnect)
        r.add_post("/admin/faults/rest-error", self.rest_error)
        r.add_post("/admin/faults/rest-mangle", self.rest_mangle)
        r.add_post("/admin/faults/exchange-refuse", self.exchange_refuse)
        r.add_post("/admin/faults/latency", self.latency)
        r.add_post("/admin/faults/expire-tokens", self.expire_tokens)
        r.add_post("/admin/faults/notices", self.notices)
        r.add_post("/admin/faults/batch", self.batch)
        r.add_post("/admin/faults/legacy-notice", self.legacy_notice)
        r.add_post("/admin/faults/ccld-lag", self.ccld_lag)
        r.add_post("/admin/faults/cancel-confirm", self.cancel_confirm)
        r.add_post("/admin/faults/unknown-quote", self.unknown_quote)
        r.add_post("/admin/faults/bad-print", self.bad_print)
        r.add_post("/admin/faults/forged-notice", self.forged_notice)
        r.add_post("/admin/ws/pingpong", self.pingpong)
        r.add_get("/admin/ws/registrations", self.ws_registrations)
        r.add_post("/admin/save", self.save)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except KisError as err:
            return _json({"error": err.msg1, "msg_cd": err.msg_cd}, 400)
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            return _err(f"bad request: {exc!r}")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        doc = json.loads(raw.decode("utf-8") or "{}")
        if not isinstance(doc, dict):
            raise ValueError("body must be a JSON object")
        return doc

    def _last(self) -> dict[str, int]:
        return {c: st.last for c, st in self.twin.exchange.stocks.items()}

    # ------------------------------------------------------------------ reads
    async def state(self, request: web.Request) -> web.Response:
        tw = self.twin
        if follower := request.headers.get(FOLLOWER_HEADER):
            self.followers.read(follower, tw.clock.now())
        return _json(
            {
                "endpoints": self.server.endpoints(),
                "clock": tw.clock.mode.value,
                "now": tw.clock.now().isoformat(),
                "speed": tw.clock.speed,
                "day": tw.exchange.day.isoformat(),
                "phase": tw.clock.phase().value,
                "sessions": len(self.server.ws_hub.sessions) if self.server.ws_hub else 0,
                "faults": tw.faults.describe(),
                "prices": self._last(),
            }
        )

    async def accounts(self, request: web.Request) -> web.Response:
        last = self._last()
        return _json([account_view(a, last) for a in self.twin.exchange.accounts.values()])

    async def account(self, request: web.Request) -> web.Response:
        acct = self.twin.exchange.accounts.get(request.match_info["account"])
        if acct is None:
            return _err("no such account", 404)
        return _json(account_view(acct, self._last()))

    async def orders(self, request: web.Request) -> web.Response:
        acct_id = request.match_info["account"]
        if acct_id not in self.twin.exchange.accounts:
            return _err("no such account", 404)
        return _json([order_view(r) for r in self.twin.exchange.account_orders(acct_id)])

    async def ws_registrations(self, request: web.Request) -> web.Response:
        """Every open websocket session and its registered (tr_id, tr_key) pairs, notice slot included."""
        hub = self.server.ws_hub
        sessions = [s for s in (hub.sessions if hub else ()) if not s.closed]
        return _json(
            {
                "sessions": [
                    {
                        "app_key": s.key.key if s.key else None,
                        "registrations": sorted([tr_id, tr_key] for tr_id, tr_key in s.regs),
                    }
                    for s in sessions
                ]
            }
        )

    async def book(self, request: web.Request) -> web.Response:
        st = self.twin.exchange.stock(request.match_info["code"])
        if st is None:
            return _err("no such stock", 404)
        asks, bids = st.book.depth(10)
        return _json(
            {
                "code": st.code,
                "last": st.last,
                "base": st.prev_close,
                "lower": st.book.lower,
                "upper": st.book.upper,
                "asks": asks,
                "bids": bids,
                "acml_vol": st.acml_vol,
            }
        )

    # ------------------------------------------------------------------ actions
    async def money(self, request: web.Request) -> web.Response:
        """{"amount": KRW}: money into (+: a deposit, a dividend) or out of (-: a withdrawal) the account, no trade: the
        deposit (예수금) and the D+2 cash move at once. A withdrawal takes no more than the orderable cash (what open
        buys hold stays). The account's `moved` counts it (an audit of trades leaves it out)."""
        acct = self.twin.exchange.accounts.get(request.match_info["account"])
        if acct is None:
            return _err("no such account", 404)
        b = await self._body(request)
        amount = b.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or not amount or abs(amount) > MAX_MONEY:
            return _err('body must be {"amount": KRW} (a non-zero integer up to 10^15: + in, - out)', 400)
        # (what may leave: the deposit, less what open buys hold; a sale's proceeds settle at D+2 first)
        free = min(acct.orderable_cash, acct.dnca - acct.reserved)
        if -amount > free:
            return _err(f"a withdrawal of {-amount:,} KRW exceeds what may leave the account, {max(free, 0):,}", 400)
        acct.cash += amount
        acct.dnca += amount
        acct.moved += amount
        return _json(account_view(acct, self._last()))

    async def add_account(self, request: web.Request) -> web.Response:
        self.twin.load_accounts({"accounts": [await self._body(request)]})
        return _json({"ok": True})

    async def external_order(self, request: web.Request) -> web.Response:
        """{"account": "CANO-01", "code": "005930", "side": "buy"|"sell", "ord_dvsn": "00", "qty": 1, "price": 70000}"""
        b = await self._body(request)
        acct = self.twin.exchange.accounts.get(str(b["account"]))
        if acct is None:
            return _err("no such account", 404)
        side = BookSide.BUY if str(b.get("side", "buy")).lower() == "buy" else BookSide.SELL
        rec = self.twin.exchange.place(
            acct,
            str(b["code"]),
            side,
            str(b.get("ord_dvsn", "00")),
            int(b["qty"]),
            int(b.get("price", 0)),
            external=True,
        )
        return _json(order_view(rec))

    async def clock_close(self, request: web.Request) -> web.Response:
        tw = self.twin
        tw.clock.move_to_close()
        tw.exchange.on_clock()
        if tw.exchange._closed_day != tw.exchange.day:  # kst/replay on a holiday: close anyway
            tw.exchange.close_day()
        return _json({"day": tw.exchange.day.isoformat(), "phase": tw.clock.phase().value})

    async def clock_next_day(self, request: web.Request) -> web.Response:
        tw = self.twin
        tw.clock.move_to_next_day()
        tw.exchange.on_clock()
        return _json({"day": tw.exchange.day.isoformat(), "phase": tw.clock.phase().value})

    async def clock_move(self, request: web.Request) -> web.Response:
        """{"to": "HH:MM[:SS]"} (today) or an ISO date-time, KST: jump there (kst/replay clocks)."""
        b = await self._body(request)
        tw = self.twin
        raw = str(b.get("to", ""))
        try:
            if "T" in raw or "-" in raw:
                when = dt.datetime.fromisoformat(raw)
            else:
                when = dt.datetime.combine(tw.clock.today(), dt.time.fromisoformat(raw))
        except ValueError:
            return _json({"error": f"bad time {raw!r}: HH:MM[:SS] or YYYY-MM-DDTHH:MM:SS"}, status=400)
        tw.clock.move_to(when)
        tw.exchange.on_clock()
        return _json(
            {"day": tw.exchange.day.isoformat(), "phase": tw.clock.phase().value, "now": tw.clock.now().isoformat()}
        )

    async def set_price(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        self.twin.exchange.set_price(str(b["code"]), int(b["price"]))
        st = self.twin.exchange.stock(str(b["code"]))
        return _json({"code": st.code if st else b["code"], "last": st.last if st else 0})

    async def halt(self, request: web.Request) -> web.Response:
        """{"code": "005930", "halted": true} — suspend trading in a code (거래정지) or resume it."""
        b = await self._body(request)
        ex = self.twin.exchange
        st = ex.stock(str(b.get("code", "")))
        if st is None:
            raise web.HTTPBadRequest(text=f"unknown code {b.get('code')!r}")
        if bool(b.get("halted", True)):
            ex.halted.add(st.code)
        else:
            ex.halted.discard(st.code)
        return _json({"code": st.code, "halted": st.code in ex.halted})

    async def split(self, request: web.Request) -> web.Response:
        """{"code": "005930", "num": 50, "den": 1} — a split (num new shares for den old) at the next session;
        "shares": false — a bonus or rights issue's ex-rights day (13:10 for a 1:0.3 bonus): the prices only, the
        shares credited when they list (POST /admin/accounts/{account}/shares)."""
        b = await self._body(request)
        shares = b.get("shares", True)
        if not isinstance(shares, bool):
            raise web.HTTPConflict(text=f'"shares" is true or false, not {shares!r}')
        try:
            st = self.twin.exchange.split(
                str(b.get("code", "")), int(b.get("num", 0)), int(b.get("den", 1)), shares=shares
            )
        except (TypeError, ValueError) as e:
            raise web.HTTPConflict(text=str(e)) from None
        return _json({"code": st.code, "last": st.last, "history": len(st.history)})

    async def shares(self, request: web.Request) -> web.Response:
        """{"code": "005930", "qty": 30} — new shares credited to the account at no cost (a bonus issue's listing)."""
        b = await self._body(request)
        try:
            h = self.twin.exchange.credit_shares(request.match_info["account"], str(b.get("code", "")), int(b["qty"]))
        except (KeyError, TypeError, ValueError) as e:
            raise web.HTTPConflict(text=str(e)) from None
        return _json({"qty": h.qty, "cost": h.cost})

    async def step(self, request: web.Request) -> web.Response:
        """{"n": 100, "codes": ["005930"]} — run the price process n times now."""
        b = await self._body(request)
        n = int(b.get("n", 1))
        codes = b.get("codes")
        ex = self.twin.exchange
        t0 = time.perf_counter()
        for _ in range(max(n, 0)):
            ex.step(list(codes) if codes else None)
        return _json({"n": n, "seconds": time.perf_counter() - t0})

    # ------------------------------------------------------------------ faults
    async def faults(self, request: web.Request) -> web.Response:
        return _json(self.twin.faults.describe())

    async def faults_reset(self, request: web.Request) -> web.Response:
        self.twin.faults.reset()
        # and the one-tokenP-a-minute window of every key (kis/sim/auth.py): a test that resets the twin
        # between brokers starts clean; the throttle itself stays on (API.md §9)
        self.twin.auth.reset_throttle()
        if self.server.ws_hub:
            self.server.ws_hub.flush_held_notices()
        return _json({"ok": True})

    async def ws_drop(self, request: web.Request) -> web.Response:
        return _json({"dropped": self.server.ws_hub.drop_all() if self.server.ws_hub else 0})

    async def ws_refuse(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        self.twin.faults.ws_refuse_until = time.monotonic() + float(b.get("seconds", 10))
        return _json({"ok": True})

    async def sub_refuse(self, request: web.Request) -> web.Response:
        """{"code": "005930", "count": 1}: the code's next N market-data registrations are answered
        OPSP0008 (MAX SUBSCRIBE OVER) though slots are free, as KIS does when it still counts an old
        session's registrations."""
        b = await self._body(request)
        self.twin.faults.sub_refusals[str(b["code"])] = int(b.get("count", 1))
        return _json({"ok": True})

    async def ws_invalid_utf8(self, request: web.Request) -> web.Response:
        n = await self.server.ws_hub.send_invalid_utf8() if self.server.ws_hub else 0
        return _json({"sent": n})

    async def rest_disconnect(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        when = str(b.get("when", "before"))
        if when not in ("before", "after"):
            return _err("when must be before|after")
        self.twin.faults.disconnects.append(
            RestDisconnect(int(b.get("count", 1)), when, str(b.get("path_contains", "")))
        )
        return _json({"ok": True})

    async def rest_error(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        kind = str(b.get("kind", "500"))
        if kind not in ("500", "EGW00201"):
            return _err("kind must be 500|EGW00201")
        self.twin.faults.errors.append(RestError(int(b.get("count", 1)), kind, str(b.get("path_contains", ""))))
        return _json({"ok": True})

    async def rest_mangle(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        if not isinstance(b.get("field"), str) or not b["field"]:
            return _err("field must name a reply field, e.g. ODNO")
        self.twin.faults.mangles.append(
            ReplyMangle(int(b.get("count", 1)), b["field"], b.get("value"), str(b.get("path_contains", "")))
        )
        return _json({"ok": True})

    async def exchange_refuse(self, request: web.Request) -> web.Response:
        """{"count": 1, "kind": "new"|"revise"}: the next N such lines placed over REST are acknowledged
        (APBK0013, ODNO, acceptance notice), then refused by the exchange (RFUS_YN 1 for that ODNO, rjct_qty)."""
        b = await self._body(request)
        kind = str(b.get("kind", "new"))
        if kind not in EXCHANGE_REFUSAL_KINDS:
            return _err("kind must be new|revise")
        faults = self.twin.faults
        self.twin.exchange.refuse_after_ack = faults.take_exchange_refusal
        faults.exchange_refusals.append(ExchangeRefusal(int(b.get("count", 1)), kind))
        return _json({"ok": True})

    async def latency(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        self.twin.faults.latency_ms = float(b.get("ms", 0))
        return _json({"ok": True})

    async def expire_tokens(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        n = self.twin.auth.expire_all(reset_throttle=bool(b.get("reset_throttle", True)), app_key=b.get("app_key"))
        return _json({"expired": n})

    async def notices(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        nf = self.twin.faults.notices
        nf.delay_ms = float(b.get("delay_ms", nf.delay_ms))
        nf.duplicate = bool(b.get("duplicate", nf.duplicate))
        nf.reorder = bool(b.get("reorder", nf.reorder))
        nf.lose_fills = bool(b.get("lose_fills", nf.lose_fills))
        if not nf.reorder and self.server.ws_hub:
            self.server.ws_hub.flush_held_notices()
        return _json({"ok": True})

    async def batch(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        self.twin.faults.batch_records = max(1, int(b.get("records", 1)))
        return _json({"ok": True})

    async def legacy_notice(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        self.twin.faults.legacy_notice = bool(b.get("on", True))
        return _json({"ok": True})

    async def ccld_lag(self, request: web.Request) -> web.Response:
        """{"ms": 3000}: inquire-daily-ccld leaves out order lines younger than that (0 = off)."""
        b = await self._body(request)
        ms = float(b.get("ms", 0))
        if ms < 0:
            return _err("ms must be >= 0")
        self.twin.faults.ccld_lag_ms = ms
        return _json({"ok": True})

    async def cancel_confirm(self, request: web.Request) -> web.Response:
        """{"mode": "single"}: a cancel gets its 접수 notice only; "two" (default): 접수 then 확인."""
        b = await self._body(request)
        mode = str(b.get("mode", "single"))
        if mode not in ("single", "two"):
            return _err("mode is 'single' or 'two'")
        self.twin.faults.cancel_confirm_single = mode == "single"
        return _json({"ok": True})

    async def unknown_quote(self, request: web.Request) -> web.Response:
        """{"mode": "zero"}: inquire-price answers an unknown code rt_cd 0, every field zero or blank;
        "refuse" (default): APBK0656."""
        b = await self._body(request)
        mode = str(b.get("mode", "zero"))
        if mode not in ("zero", "refuse"):
            return _err("mode is 'zero' or 'refuse'")
        self.twin.faults.unknown_quote_zero = mode == "zero"
        return _json({"ok": True})

    async def bad_print(self, request: web.Request) -> web.Response:
        """{"code": "005930", "fields": {"2": "-71000"}}: the code's last print sent again with these
        H0STCNT0 fields replaced (index → text), to its subscribers; the market itself is unchanged."""
        b = await self._body(request)
        fields = {int(k): str(v) for k, v in dict(b.get("fields", {})).items()}
        if not self.server.ws_hub:
            return _err("no websocket server")
        return _json({"sent": self.server.ws_hub.bad_print(str(b["code"]), fields)})

    async def forged_notice(self, request: web.Request) -> web.Response:
        """{"odno": ..., "qty": 3, "price": 70000}: a fill notice for an existing order that did not
        fill (KIS's own books and the day's order list are untouched); with "garble": true, a notice of
        that order with a field that does not read."""
        b = await self._body(request)
        ex = self.twin.exchange
        rec = ex.orders.get(str(b["odno"]).zfill(10))
        if rec is None:
            return _err("no such order", 404)
        acct = ex.accounts[rec.account_id]
        hub = self.server.ws_hub
        if bool(b.get("garble", False)) and hub:
            hub.garble_next_notice = 9  # CNTG_QTY
        try:
            ex._notify(
                acct,
                rec,
                cntg_yn="2",
                acpt="2",
                rctf="0",
                qty=int(b.get("qty", rec.qty)),
                price=int(b.get("price", rec.price)),
                tmd=ex.now_tmd(),
            )
        finally:
            if hub:
                hub.garble_next_notice = None
        return _json({"ok": True})

    async def pingpong(self, request: web.Request) -> web.Response:
        return _json({"sent": self.server.ws_hub.pingpong_all() if self.server.ws_hub else 0})

    async def save(self, request: web.Request) -> web.Response:
        path = self.server.save_state()
        return _json({"saved": str(path) if path else None})
