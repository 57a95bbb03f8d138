"""Optional JSON state file: a restarted twin keeps its accounts, orders and prices.

Written atomically (temp file + rename). Open orders of the saved day are parked back in the books
(without matching) if the twin restarts on the same day; otherwise the day roll expires them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kis.sim.auth import AppKey
from kis.sim.clock import OPEN_MODE_LAST, ClockMode
from kis.sim.engine import BookSide, Tif
from kis.sim.exchange import OrderKind, OrderRecord
from kis.sim.ledger import Account, Holding

if TYPE_CHECKING:
    from kis.sim.twin import Twin

VERSION = 1
SAVE_EVERY_S = 5.0  # a running twin's saves (kis/sim/server.py, on elapsed time); a stop saves at once
# ... and this soon after an account's order event (an order, a fill, a cancel): a gateway's kill -9 took its embedded
# twin's last 5-10 s with it, the books' fills and resting orders then unknown to the twin for good (a hunt). Not at
# each event: the whole state is written and fsynced each time
SAVE_SOON_S = 0.5
UNSAVED_S = 2 * SAVE_EVERY_S  # at most this long unsaved before a kill -9 (a late save, a lagging loop: slack)
ODNO_GAP_AFTER_RESTORE = 100_000  # order numbers skipped at a restore (more than a twin takes between two saves)


class SeedMismatch(ValueError):
    """The state file was saved by a twin of another seed: its accounts are that seed's demo accounts, so a twin of
    this seed would hand out credentials the restored accounts do not know (KIS's OPSQ2000 at the gateway's start,
    blamed on a KTRADER_KIS_ACCOUNT nobody set)."""

    def __init__(self, path: Path, saved: int, seed: int) -> None:
        super().__init__(f"{path} holds the state of a twin of seed {saved}, not {seed}")
        self.path, self.saved, self.seed = path, saved, seed


class StateUnreadable(ValueError):
    """The state file cannot be read as a twin's saved state (empty, cut short, not JSON): a crash or a power loss
    while it was written, or a file put there by hand."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} cannot be read as the twin's saved state ({why})")
        self.path = path


def save(twin: Twin, path: Path) -> None:
    ex = twin.exchange
    doc: dict[str, Any] = {
        "version": VERSION,
        "seed": twin.config.seed,
        "day": ex.day.isoformat(),
        "odno_seq": ex._odno_seq,
        # an open clock's time reached: a restart goes on from it (open mode starts each day at its opening)
        "open_at": twin.clock.now().isoformat() if getattr(twin.clock, "mode", None) is ClockMode.OPEN else None,
        "open_closed": bool(getattr(twin.clock, "_closed", False)),  # the admin closed the day: it stays closed
        "keys": [dataclasses.asdict(k) for k in twin.auth.keys.values()],
        "accounts": [
            {
                **{f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name != "holdings"},
                "holdings": {c: dataclasses.asdict(h) for c, h in a.holdings.items()},
            }
            for a in ex.accounts.values()
        ],
        "orders": [
            {
                **{f.name: getattr(r, f.name) for f in dataclasses.fields(r)},
                "day": r.day.isoformat(),
                "side": int(r.side),
                "tif": int(r.tif),
                "kind": r.kind.value,
            }
            for r in ex.orders.values()
        ],
        "prices": {c: {"last": st.last, "prev_close": st.prev_close} for c, st in ex.stocks.items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, ensure_ascii=False))
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces the last one: a power loss leaves one whole file or the other
    os.replace(tmp, path)


def restore(twin: Twin, path: Path) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateUnreadable(path, str(e)) from None
    if not isinstance(doc, dict):
        raise StateUnreadable(path, "not a saved state")
    if doc.get("version") != VERSION:
        return
    if doc.get("seed", twin.config.seed) != twin.config.seed:  # (a file saved before the seed was kept: as before)
        raise SeedMismatch(path, doc["seed"], twin.config.seed)
    ex = twin.exchange
    ahead = dt.date.fromisoformat(doc["day"])
    is_open = getattr(twin.clock, "mode", None) is ClockMode.OPEN
    at = doc.get("open_at") if is_open else None
    reached = dt.datetime.fromisoformat(at) if at else None
    if reached is not None and reached.date() > ahead:  # the clock had turned the day, the exchange not yet
        ahead = reached.date()
    if is_open and ahead > ex.day:
        # an open clock left running rolls its synthetic days faster than the calendar (one is ~15 h): a restart
        # goes on from the day it had reached, never back to a day already traded and closed (the gateway's
        # books of that day, its end-of-day marks and reports, would be met again)
        twin.clock.move_to(dt.datetime.combine(ahead, dt.time(9, 0)))
        ex._roll_day(ahead)
    if reached is not None and reached.date() == ex.day:
        # and from the time of day it had reached: restarted at the opening again, the day's times went back (a second
        # `ktrader demo` met the first one's orders and alerts stamped after its own 'now', counted in its windows);
        # plus the time a kill -9 may have left unsaved (orders of it were stamped then), within the day
        last = dt.datetime.combine(ex.day, OPEN_MODE_LAST, tzinfo=reached.tzinfo)
        twin.clock.go_on_from(min(reached + dt.timedelta(seconds=UNSAVED_S), last), closed=bool(doc.get("open_closed")))
    for k in doc.get("keys", []):
        twin.auth.keys[k["key"]] = AppKey(**k)
    ex.accounts.clear()
    for a in doc.get("accounts", []):
        holdings = {c: Holding(**h) for c, h in a.pop("holdings", {}).items()}
        acct = Account(**a)
        acct.holdings = holdings
        ex.accounts[acct.account_id] = acct
    # the state is saved every few seconds: a twin killed with its gateway (kill -9) lost its last orders, and
    # numbered the next ones as those were, so the gateway's books took one order's number for another's (KIS
    # never gives a number twice in a day). Numbers go on from well past any the lost seconds could have used
    ex._odno_seq = int(doc.get("odno_seq", 0)) + ODNO_GAP_AFTER_RESTORE
    saved_day = dt.date.fromisoformat(doc["day"])
    same_day = saved_day == ex.day
    for code, p in doc.get("prices", {}).items():
        st = ex.stocks.get(code)
        if st is None:
            continue
        base = p["prev_close"] if same_day else p["last"]
        st.book.reset_day(base)
        st.reset_day(base)
        st.last = p["last"]
        ex.process.reanchor(code, st.last)
    ex.orders.clear()
    for o in doc.get("orders", []):
        o["day"] = dt.date.fromisoformat(o["day"])
        o["side"] = BookSide(o["side"])
        o["tif"] = Tif(o["tif"])
        o["kind"] = OrderKind(o["kind"])
        rec = OrderRecord(**o)
        ex.orders[rec.odno] = rec
        if rec.open_qty > 0:
            st = ex.stocks[rec.code]
            if same_day:
                st.book.submit(rec.oid, rec.side, rec.unit if rec.price else None, rec.open_qty, rec.odno, match=False)
                ex._by_oid[(rec.code, rec.oid)] = rec
                st.book._next_oid = max(st.book._next_oid, rec.oid + 1)
            else:
                rec.expired_qty += rec.open_qty
                ex._reserve(ex.accounts[rec.account_id], rec)
    if not same_day:
        for acct in ex.accounts.values():
            acct.roll_day()
    for st in ex.stocks.values():
        ex._refresh_synthetic(st, st.last, match=False)
