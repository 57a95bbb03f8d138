"""`ktrader rehearse`: the whole desk over N trading days of real KRX history, then an audit and a parity
check against the backtester (see tools/rehearse/desk.py and audit.py).

A trading day, as driven here (KST, the twin's clock; a normal day's times, each day's own come from
the KRX calendar: the year's first session opens at 10:00, the CSAT day runs 10:00-16:30, see DayStops):
  pre-open → 08:30 opening auction (held next-session orders are released and go to KIS) → 09:00 open
  (the auction uncrosses at the day's open) → 10:00 … 15:00 (the continuous session's prints, tick
  strategies trade) → 15:20 closing auction (each card's end-of-day clean-up) → 15:30 close → 15:45
  (the gateway closes the day: reconciliation, expiry, the daily report; daily bars close and the
  daily-bar strategies decide for the next session) → the next trading day (nights, weekends and
  holidays are jumped over by the KRX calendar).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from common.calendar import trading_days
from common.config import AgentCard, load_card
from common.enums import BarInterval
from common.orders import Order
from kis.sim.history import DailyBar
from kis.sim.history_market import on_day_grid
from kis.sim.history_plan import tradable
from kis.sim.universe import codes as twin_codes
from kis.sim.universe import get as twin_stock
from tools.backtest.cli import _listings
from tools.backtest.data import Series, load_codes
from tools.backtest.engine import BacktestConfig, BacktestError, run_backtest
from tools.backtest.history import load_history
from tools.rehearse.audit import (
    Audit,
    ParityRow,
    Reason,
    Scope,
    _orders,
    audit_run,
    backtest_filled,
    counted_fills,
    compare,
    live_fees,
    live_filled,
    parity_failures,
    parity_reason,
    placed,
    restricted_since,
)
from tools.rehearse.desk import DayStops, Desk, RehearsalError

Progress = Callable[[str, int, int], None]


class Summary(msgspec.Struct):
    days: list[str]
    cards: list[str]
    seconds: float
    audit: Audit
    ok: bool


def pick_days(series: dict[str, Series], n: int, start: dt.date | None) -> list[dt.date]:
    """N KRX trading days covered by the data: from `start`, or the last N the data has."""
    last = max(dt.date.fromisoformat(s.bars[-1].start[:10]) for s in series.values() if s.bars)
    first = min(dt.date.fromisoformat(s.bars[0].start[:10]) for s in series.values() if s.bars)
    cal = trading_days(first, last)
    if start is not None:
        cal = [d for d in cal if d >= start]
        return cal[:n]
    return cal[-n:]


def _traded(series: dict[str, Series], day: dt.date) -> set[str]:
    iso = day.isoformat()
    return {code for code, s in series.items() for b in s.bars if b.start[:10] == iso and b.volume > 0}


def _daily_agents(cards: list[AgentCard], traded: set[str]) -> frozenset[str]:
    """The agents that get a daily bar of a day: they subscribe to 1d and one of their codes traded."""
    return frozenset(c.id for c in cards if BarInterval.D1 in c.subscriptions.bars and set(c.codes) & traded)


def load_series(data: Path, codes: list[str]) -> dict[str, Series]:
    """The cards' daily bars, each code with its market and kind from the twin's master list as
    `ktrader backtest` reads them (an ETF: the ETF tick grid, no sell tax), and each day as the twin
    prints it (on its tick grid: split-adjusted history lies off it, e.g. 017670's 2020 open 41,149 is
    printed 41,150), so that the parity backtest trades each code at the prices the gateway saw."""
    listings, _ = _listings(None, codes)  # a code the list lacks: assumed a KOSPI stock, as the twin does
    return {c: _as_printed(s) for c, s in load_codes(data, codes, listings=listings).items()}


def _as_printed(s: Series) -> Series:
    bars = []
    for b in s.bars:
        row = DailyBar(dt.date.fromisoformat(b.start[:10]), b.open, b.high, b.low, b.close, b.volume)
        if tradable(row):
            g = on_day_grid(row, s.kind, s.market)
            if (g.open, g.high, g.low, g.close) != (b.open, b.high, b.low, b.close):
                b = msgspec.structs.replace(b, open=g.open, high=g.high, low=g.low, close=g.close)
        bars.append(b)
    return dataclasses.replace(s, bars=bars)


def rehearse(
    card_paths: list[Path],
    data: Path,
    n_days: int,
    start: dt.date | None = None,
    kill_every: int = 0,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> Summary:
    t0 = time.monotonic()
    cards = [(p, load_card(p)) for p in card_paths]
    codes = sorted({c for _, card in cards for c in card.codes})
    if unlisted := [c for c in codes if twin_stock(c) is None]:
        # (its agent would be refused every order, DENIED_UNKNOWN_CODE, and the audit fail as "unexplained")
        raise RehearsalError(
            f"{', '.join(unlisted)} not in the twin's stock list (kis/sim/universe.py), which the rehearsal trades: "
            f"rehearse cards on its codes ({', '.join(twin_codes()[:6])}...)"
        )
    series = load_series(data, codes)
    days = pick_days(series, n_days, start)
    if len(days) < n_days:
        raise RehearsalError(
            f"{data} covers only {len(days)} trading days from {start or 'its end'}; asked for {n_days}"
        )
    keep = workdir is not None
    wd = workdir or Path(tempfile.mkdtemp(prefix="ktrader-rehearse-"))
    desk = Desk(workdir=wd, data=data, cards=cards, first_day=days[0])
    plain = [c for _, c in cards]
    twin_orders: list[dict[str, object]] = []
    holdings: dict[str, int] = {}
    day_fills: dict[str, int] = {}
    try:
        desk.start()
        desk.wait_agents_online()
        for i, day in enumerate(days):
            key = day.strftime("%Y%m%d")
            if progress:
                progress(key, i, len(days))
            if i:
                moved = desk.next_day()
                if moved != day:
                    raise RehearsalError(f"the twin moved to {moved}, the rehearsal expected {day}")
            kill_gw = kill_every and i % kill_every == kill_every - 1
            kill_agent = kill_every and i % kill_every == kill_every // 2
            stops = DayStops.of(day)
            desk.advance(stops.auction)
            desk.settle(day=key)  # held orders released and sent
            desk.advance(stops.open)
            desk.settle(day=key)
            for n, step in enumerate(stops.intraday):
                desk.advance(step)
                desk.settle(day=key)
                if kill_agent and n == 1:
                    victim = plain[(i // max(kill_every, 1)) % len(plain)].id
                    desk.kill_agent(victim)
                    desk.wait_agents_online()
                if kill_gw and n == 3:
                    desk.kill_gateway()
                    desk.wait_agents_online()
            desk.advance(stops.closing_call)
            desk.settle(day=key)
            desk.advance(stops.close)
            desk.settle(day=key)
            desk.advance(stops.after_close)
            st = desk.settle(60.0, day=key, report=True, daily=_daily_agents(plain, _traded(series, day)))
            day_fills[key] = counted_fills(st)
        if progress:
            progress("audit", len(days), len(days))
        twin_orders = desk.twin_orders()
        holdings = {c: int(h["qty"]) for c, h in desk.twin_account()["holdings"].items() if h["qty"]}
    finally:
        desk.stop()
    audit = audit_run(desk.run, days, twin_orders, holdings, desk.restarts, day_fills)
    audit.parity = parity(cards, series, days, desk.run)
    audit.failures += parity_failures(audit.parity)
    if not keep:
        shutil.rmtree(wd, ignore_errors=True)
    return Summary(
        days=[d.isoformat() for d in days],
        cards=[c.id for _, c in cards],
        seconds=round(time.monotonic() - t0, 1),
        audit=audit,
        ok=audit.ok,
    )


def card_reasons(card: AgentCard, orders: list[Order]) -> list[Reason]:
    """Every reason the card's live run may differ from its backtest, each from when it applies."""
    reasons = [r] if (r := parity_reason(card)) is not None else []
    if since := restricted_since(orders, card.id):
        reasons.append(
            Reason(
                f"a trading state restricted it from {since} (reducing or halted by a limit or the "
                "operator): live it lasts until `ktrader control resume`, a backtest's daily loss limit ends "
                "with the day",
                Scope.SINCE,
                since,
            )
        )
    return reasons


def parity(
    cards: list[tuple[Path, AgentCard]], series: dict[str, Series], days: list[dt.date], run: Path
) -> list[ParityRow]:
    orders = [o for _, o in _orders(run)]
    filled = live_filled(live_fees(run, [c.id for _, c in cards]))
    # what the agents read during the rehearsal (quotes with company data, investor flows), as the
    # gateway recorded it: the backtest of the same cards reads the same
    recorded = run / "data" / "queries.sqlite"
    history = load_history(run) if recorded.exists() else None
    rows = []
    for _, card in cards:
        live, live_exits = placed((o for o in orders if o.agent == card.id), filled)
        reasons = card_reasons(card, orders)
        mine = {c: series[c] for c in card.codes}
        try:
            # whole fills, as the twin's history mode fills (kis/sim/history_market.py): a 500-share buy of a code
            # trading 2,259 filled whole live and 225 in the backtest (its 10 % default), and every later decision
            # differed
            cfg = BacktestConfig(date_from=days[0], date_to=days[-1], history=history, max_participation_bp=None)
            result = run_backtest(card, mine, cfg)
        except BacktestError as e:  # e.g. a strategy that needs company data or flows the data set lacks
            rows.append(
                compare(card.id, live, [], [Reason(f"no backtest on this data: {e}"), *reasons], (live_exits, []))
            )
            continue
        backtest, backtest_exits = placed(result.orders, backtest_filled(result.fills))
        rows.append(compare(card.id, live, backtest, reasons, (live_exits, backtest_exits)))
    return rows


def default_cards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.toml"))
