"""`ktrader cards check [DIR|CARD]`: every card in a folder (or one card file) checked before anything runs.

Rules: the card decodes (unknown keys refused, fields valid); ids unique; codes real (KIS stock
master when given, else the twin's list, which only warns); the strategy imports and its params
validate; all budgets fit the account budget; the market-data registrations fit the 40 slots
(41 per app key, one for fill notices); account limits that can work (a drawdown needs a budget, a
cash reserve below it, a halt no shallower than the reduce level); a card polling quotes
(`subscriptions.poll_quotes_s`) can afford it on its `rate_quota_per_s` (warning). Polling is an
opt-in fallback for trades the gateway refuses at run time, not a way past the 40 slots, so the
slot rule stays an error. Every problem names the card file, the field and why."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from agent.runtime import load_strategy_class
from agent.strategy import params_codes_problems, unsubscribed_bars
from common.config import AgentCard, ConfigError, limit_problems, load_card
from common.ids import EXTERNAL_AGENT
from kis.master import MasterEntry, StockMaster, load_stock_master
from server.subscriptions import MARKET_DATA_SLOTS


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    reason: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning" if self.warning else "error"
        return f"{self.file}: {kind}: {self.field}: {self.reason}"


def check_cards(folder: Path, master: dict[str, MasterEntry] | None = None, account_budget: int = 0) -> list[Problem]:
    problems: list[Problem] = []
    files = card_files(folder)
    if not files:
        if not folder.exists():
            return [Problem(str(folder), "-", "not found: give a card file or a folder of cards")]
        return [Problem(str(folder), "-", "no *.toml cards here")]
    cards: list[tuple[Path, AgentCard]] = []
    for f in files:
        try:
            cards.append((f, load_card(f)))
        except ConfigError as e:
            problems.append(Problem(str(f), "card", str(e).removeprefix(f"{f}: ")))
    seen: dict[str, Path] = {}
    slots: dict[tuple[str, str], list[str]] = {}
    # one loader for the fact "which codes exist" (kis.master.load_stock_master, as the gateway)
    sm = load_stock_master(None) if master is None else StockMaster(entries=master, source="master", strict=True)
    for f, card in cards:
        if card.id in seen:
            problems.append(Problem(str(f), "id", f"{card.id!r} is also the id of {seen[card.id]}"))
        seen.setdefault(card.id, f)
        kinds = (["trades"] if card.subscriptions.trades else []) + (["book"] if card.subscriptions.book else [])
        for code in card.codes:
            for kind in kinds:
                slots.setdefault((kind, code), []).append(card.id)
        problems.extend(card_problems(f, card, sm))
    if len(slots) > MARKET_DATA_SLOTS:
        polling = sorted(card.id for _, card in cards if card.subscriptions.poll_quotes_s > 0)
        fallback = (
            f"; {', '.join(polling)} would REST-poll quotes for refused trades (poll_quotes_s)"
            if polling
            else "; subscriptions.poll_quotes_s > 0 lets a card REST-poll quotes for refused trades (opt-in fallback)"
        )
        problems.append(
            Problem(
                str(folder),
                "subscriptions",
                f"{len(slots)} distinct registrations requested, {MARKET_DATA_SLOTS} available{fallback}",
            )
        )
    total = sum(card.budget for _, card in cards)
    if account_budget and total > account_budget:
        problems.append(
            Problem(
                str(folder),
                "budget",
                f"cards' budgets add up to {total:,} KRW, the account budget is {account_budget:,}",
            )
        )
    return problems


def card_files(path: Path) -> list[Path]:
    """The cards a path names: a file is one card (as `cards approve` takes it), a folder its *.toml."""
    return [path] if path.is_file() else sorted(path.glob("*.toml"))


def card_problems(f: Path, card: AgentCard, sm: StockMaster) -> list[Problem]:
    """The rules one card must pass on its own: reserved id, real codes, a loadable strategy whose
    params validate, a polling rate its quota can afford (`ktrader cards check` and `control reload`)."""
    problems: list[Problem] = []
    known, strict = sm.entries, sm.strict
    if card.id == EXTERNAL_AGENT:
        problems.append(Problem(str(f), "id", f"{EXTERNAL_AGENT!r} is reserved for orders placed outside ktrader"))
    if not card.codes:
        problems.append(Problem(str(f), "codes", "no codes: the agent could not trade anything"))
    for code in card.codes:
        if code not in known:
            where = "the KIS stock master" if strict else "the twin's stock list (no --master given)"
            problems.append(Problem(str(f), f"codes: {code}", f"not in {where}", warning=not strict))
        elif strict and known[code].group not in ("ST", "EF", "EN"):
            problems.append(
                Problem(
                    str(f),
                    f"codes: {code}",
                    f"{known[code].name} is a {known[code].group}, not a tradable stock/ETF/ETN",
                )
            )
    for field, why in limit_problems(card.risk, card.budget):
        problems.append(Problem(str(f), field, why))
    unset = [k for k in ("max_open_orders", "max_orders_per_minute") if not getattr(card.risk, k)]
    if unset:  # (the account's limits are shared: one agent's flood denied every other agent's buys)
        problems.append(
            Problem(
                str(f),
                "risk." + unset[0],
                f"no {' nor '.join(unset)} of its own: this agent alone can use up the account's "
                "(shared by every agent) and lock the others out of new orders",
                warning=True,
            )
        )
    poll = card.subscriptions.poll_quotes_s
    if poll > 0:
        need = len(card.codes) / poll  # if every trade registration of the card were refused
        if not card.subscriptions.trades:
            problems.append(
                Problem(
                    str(f),
                    "subscriptions.poll_quotes_s",
                    "polling stands in for refused trades, but trades = false",
                    warning=True,
                )
            )
        elif card.rate_quota_per_s > 0 and need > card.rate_quota_per_s:
            problems.append(
                Problem(
                    str(f),
                    "subscriptions.poll_quotes_s",
                    (
                        f"polling {len(card.codes)} codes every {poll:g}s needs {need:.1f} queries/s, "
                        f"rate_quota_per_s is {card.rate_quota_per_s:g}: polled quotes would come slower"
                    ),
                    warning=True,
                )
            )
    try:
        cls = load_strategy_class(card.strategy)
    except Exception as e:
        problems.append(Problem(str(f), "strategy", f"{card.strategy} cannot be loaded: {e}"))
        return problems
    except SystemExit as e:  # (a module that parses sys.argv or exits at import ended the whole check)
        why = f"its module exited while being imported (SystemExit {e.code})"
        problems.append(Problem(str(f), "strategy", f"{card.strategy} cannot be loaded: {why}"))
        return problems
    try:
        params = cls.parse_params(card.params)
    except Exception as e:
        problems.append(Problem(str(f), "params", f"invalid for {cls.__name__}: {e}"))
    else:
        outside, unused = params_codes_problems(cls, params, card.codes)
        if outside:
            problems.append(Problem(str(f), "params", outside))
        if unused:
            problems.append(Problem(str(f), "codes", unused, warning=True))
    missing = unsubscribed_bars(cls, card.subscriptions.bars)
    if missing:
        problems.append(
            Problem(
                str(f),
                "subscriptions.bars",
                (
                    f"{cls.__name__} decides on {', '.join(missing)} bars but the card does not subscribe to them: "
                    f"it would never trade (add bars = {[b.value for b in cls.needs_bars]})"
                ),
            )
        )
    return problems


def main(folder: Path, master_dir: Path | None, account_budget: int) -> int:
    from kis.master import MasterError

    master = None
    if master_dir is not None:
        try:
            master = load_stock_master(master_dir).entries
        except (MasterError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    sys.path.insert(0, str(Path.cwd()))
    problems = check_cards(folder, master, account_budget)
    for p in problems:
        print(p)
    errors = [p for p in problems if not p.warning]
    n = len(card_files(folder))
    print(f"{n} cards checked: {len(errors)} errors, {len(problems) - len(errors)} warnings")
    return 1 if errors else 0
