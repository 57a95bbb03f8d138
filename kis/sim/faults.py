"""Fault-injection state, driven by the admin API. Everything is off by default; counters make the
faults deterministic (the next N matching calls), never random.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class RestDisconnect:
    count: int
    when: str  # "before" (nothing done) or "after" (the call acted, the answer is lost)
    path_contains: str = ""


@dataclass(slots=True)
class RestError:
    count: int
    kind: str  # "500" (HTTP 500, EGW00500 body) or "EGW00201" (rate-limit answer)
    path_contains: str = ""


@dataclass(slots=True)
class ReplyMangle:
    """The next `count` matching REST replies get `field` (in `output`, else at the top) set to
    `value` after the call acted: a null, a number, ... where KIS documents a string."""

    count: int
    field: str
    value: object
    path_contains: str = ""


@dataclass(slots=True)
class ExchangeRefusal:
    """The next `count` lines of `kind` ("new": an order placed over REST; "revise") that pass every check
    are acknowledged (APBK0013 with their ODNO, the acceptance notice), then refused by the exchange: a
    notice with RFUS_YN 1 for that ODNO and the line's rjct_qty in the order list (kis/sim/exchange.py
    _refused_after_ack). A real KIS order can end so; the refused line holds nothing, a revised original
    keeps its terms."""

    count: int
    kind: str  # "new" | "revise" (kis/sim/exchange.py OrderKind)


EXCHANGE_REFUSAL_KINDS = ("new", "revise")


@dataclass(slots=True)
class NoticeFaults:
    delay_ms: float = 0.0
    duplicate: bool = False
    reorder: bool = False  # hold each notice until the next one, then send them swapped
    lose_fills: bool = False  # fill notices (CNTG_YN 2) never sent: a known KIS paper behaviour (API.md)


@dataclass(slots=True)
class Faults:
    disconnects: list[RestDisconnect] = field(default_factory=list)
    errors: list[RestError] = field(default_factory=list)
    mangles: list[ReplyMangle] = field(default_factory=list)
    exchange_refusals: list[ExchangeRefusal] = field(default_factory=list)
    latency_ms: float = 0.0
    notices: NoticeFaults = field(default_factory=NoticeFaults)
    ws_refuse_until: float = 0.0  # monotonic deadline: new sessions get OPSP8996
    # code -> how many of its next market-data registrations are answered OPSP0008 (MAX SUBSCRIBE OVER)
    sub_refusals: dict[str, int] = field(default_factory=dict)
    batch_records: int = 1  # realtime price/book records per frame (>1 = batched frames)
    legacy_notice: bool = False  # 23-field notice layout
    # inquire-daily-ccld hides rows younger than this (API.md §4.4/§8.15: same-day orders "may be delayed"
    # in the daily query); 0 = every row at once
    ccld_lag_ms: float = 0.0
    # a cancel gets one acceptance notice (접수, ACPT_YN 1) and no 확인 (ACPT_YN 2): API.md §11 reads "one
    # acceptance notice per order/revise/cancel"; which KIS sends is UNCONFIRMED (§5.8, §11)
    cancel_confirm_single: bool = False
    # inquire-price of an unknown code: rt_cd 0 and a zero-filled output (stck_prpr "0", what python-kis
    # reads as unknown, API.md §4.12) instead of the twin's APBK0656 refusal; which KIS does is UNCONFIRMED
    unknown_quote_zero: bool = False

    def take_disconnect(self, path: str, when: str) -> bool:
        for d in self.disconnects:
            if d.when == when and d.path_contains in path and d.count > 0:
                d.count -= 1
                if d.count == 0:
                    self.disconnects.remove(d)
                return True
        return False

    def wants_disconnect(self, path: str) -> str | None:
        """Peek which disconnect variant applies to `path` (without consuming it)."""
        for d in self.disconnects:
            if d.path_contains in path and d.count > 0:
                return d.when
        return None

    def take_error(self, path: str) -> str | None:
        for e in self.errors:
            if e.path_contains in path and e.count > 0:
                e.count -= 1
                if e.count == 0:
                    self.errors.remove(e)
                return e.kind
        return None

    def take_mangle(self, path: str) -> ReplyMangle | None:
        for m in self.mangles:
            if m.path_contains in path and m.count > 0:
                m.count -= 1
                if m.count == 0:
                    self.mangles.remove(m)
                return m
        return None

    def take_exchange_refusal(self, kind: str) -> bool:
        """Whether the exchange refuses this acknowledged line of `kind` (one of the next N)."""
        for r in self.exchange_refusals:
            if r.kind == kind and r.count > 0:
                r.count -= 1
                if r.count == 0:
                    self.exchange_refusals.remove(r)
                return True
        return False

    def ws_refusing(self) -> bool:
        return time.monotonic() < self.ws_refuse_until

    def take_sub_refusal(self, code: str) -> bool:
        left = self.sub_refusals.get(code, 0)
        if left > 0:
            self.sub_refusals[code] = left - 1
        return left > 0

    def reset(self) -> None:
        self.disconnects.clear()
        self.errors.clear()
        self.mangles.clear()
        self.exchange_refusals.clear()
        self.latency_ms = 0.0
        self.notices = NoticeFaults()
        self.ws_refuse_until = 0.0
        self.sub_refusals.clear()
        self.batch_records = 1
        self.legacy_notice = False
        self.ccld_lag_ms = 0.0
        self.cancel_confirm_single = False
        self.unknown_quote_zero = False

    def describe(self) -> dict[str, object]:
        return {
            "disconnects": [
                {"count": d.count, "when": d.when, "path_contains": d.path_contains} for d in self.disconnects
            ],
            "errors": [{"count": e.count, "kind": e.kind, "path_contains": e.path_contains} for e in self.errors],
            "mangles": [
                {"count": m.count, "field": m.field, "value": m.value, "path_contains": m.path_contains}
                for m in self.mangles
            ],
            "exchange_refusals": [{"count": r.count, "kind": r.kind} for r in self.exchange_refusals],
            "latency_ms": self.latency_ms,
            "notices": {
                "delay_ms": self.notices.delay_ms,
                "duplicate": self.notices.duplicate,
                "reorder": self.notices.reorder,
                "lose_fills": self.notices.lose_fills,
            },
            "ws_refusing": self.ws_refusing(),
            "sub_refusals": {c: n for c, n in self.sub_refusals.items() if n},
            "batch_records": self.batch_records,
            "legacy_notice": self.legacy_notice,
            "ccld_lag_ms": self.ccld_lag_ms,
            "cancel_confirm": "single" if self.cancel_confirm_single else "two",
            "unknown_quote": "zero" if self.unknown_quote_zero else "refuse",
        }
