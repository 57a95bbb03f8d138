"""The twin's shared state: configuration, accounts bound to app keys, the exchange, auth and faults.

REST, websocket and admin front ends all work on one `Twin`.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kis.sim.auth import AppKey, AuthRegistry
from kis.sim.clock import ClockMode, TwinClock
from kis.sim.exchange import Exchange, MarketConfig
from kis.sim.faults import Faults
from kis.sim.ledger import Account, FeeSchedule, Holding
from kis.sim.wire import KisError

DEFAULT_CASH = 100_000_000
E_BAD_ACCOUNT = KisError("OPSQ2000", "ERROR : INPUT INVALID_CHECK_ACNO", http_status=500, rt_cd="2")  # UNCONFIRMED


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    app_key: str
    app_secret: str
    account: str  # CANO-ACNT_PRDT_CD
    hts_id: str
    paper_app_key: str
    paper_app_secret: str
    paper_account: str

    @property
    def cano(self) -> str:
        return self.account.split("-")[0]

    @property
    def prdt(self) -> str:
        return self.account.split("-")[1]


def demo_credentials(seed: int) -> DemoCredentials:
    """Deterministic demo credentials: 36-char app keys, 180-char secrets (python-kis checks lengths)."""
    rng = random.Random(f"kis-twin-demo-{seed}")
    alnum = string.ascii_letters + string.digits

    def s(n: int) -> str:
        return "".join(rng.choice(alnum) for _ in range(n))

    app_key = "PS" + s(34)
    secret = s(180)
    paper_key = "PS" + s(34)
    paper_secret = s(180)
    cano = f"{rng.randrange(60_000_000, 69_999_999):08d}"
    paper_cano = f"{rng.randrange(50_000_000, 59_999_999):08d}"
    hts_id = "twin" + s(4).lower()
    return DemoCredentials(app_key, secret, f"{cano}-01", hts_id, paper_key, paper_secret, f"{paper_cano}-01")


@dataclass(slots=True)
class TwinConfig:
    host: str = "127.0.0.1"
    rest_port: int = 0  # real-flavour REST ("openapi")
    paper_rest_port: int = 0  # paper-flavour REST ("openapivts")
    ws_port: int = 0
    admin_port: int = 0
    seed: int = 1
    clock: str = "open"
    date: dt.date | None = None
    speed: float = 1.0
    accounts_file: Path | None = None
    state_file: Path | None = None
    replay_csv_dir: Path | None = None
    initial_cash: int = DEFAULT_CASH
    rate_real: float = 20.0
    rate_paper: float = 2.0
    auto_provision: bool = True
    tick_interval: float = 0.5  # seconds between price-process steps (0 = only via admin)
    pingpong_s: float = 100.0  # idle seconds before the server sends PINGPONG (UNCONFIRMED interval; 0 = never)
    pingpong_every_s: float = 0.0  # > 0: PINGPONG every N seconds whatever the traffic (keep-alive tests)
    commission_ppm: int = 150
    sell_tax_ppm: int | None = None  # None: the KRX rules' rate for the day, market and kind (common/costs.py)
    reject_records: bool = True
    demo_accounts: bool = True
    # history mode (kis/sim/history_market.py): stocks with history_dir/<code>.csv replay their real days
    history_dir: Path | None = None
    history_from: dt.date | None = None  # the first trading day >= this (required with history_dir)
    history_days: int = 250  # daily rows the quotation endpoints serve before the current day
    extra: dict[str, object] = field(default_factory=dict)


class Twin:
    def __init__(self, config: TwinConfig) -> None:
        self.config = config
        market = MarketConfig(
            seed=config.seed,
            fees=FeeSchedule(config.commission_ppm, config.sell_tax_ppm),
            reject_records=config.reject_records,
            replay_csv_dir=config.replay_csv_dir,
        )
        self.exchange: Exchange
        if config.history_dir is not None:
            from kis.sim.history_market import open_history, require_history_settings

            start = require_history_settings(config.history_from, config.state_file)
            self.clock, self.exchange = open_history(config.history_dir, start, config.history_days, market)
        else:
            self.clock = TwinClock(ClockMode(config.clock), config.date, config.speed)
            self.exchange = Exchange(self.clock, market)
        self.auth = AuthRegistry(
            config.seed, rate_real=config.rate_real, rate_paper=config.rate_paper, auto_provision=config.auto_provision
        )
        self.faults = Faults()
        self.demo = demo_credentials(config.seed)
        if config.demo_accounts:
            self._add_demo_accounts()
        if config.accounts_file is not None:
            self.load_accounts(json.loads(config.accounts_file.read_text(encoding="utf-8")))
        if config.state_file is not None and config.state_file.exists():
            from kis.sim.state import restore

            restore(self, config.state_file)

    # ------------------------------------------------------------------ accounts
    def _add_demo_accounts(self) -> None:
        d = self.demo
        self.add_account(d.app_key, d.app_secret, False, d.cano, d.prdt, d.hts_id, "김트윈", self.config.initial_cash)
        pc, pp = d.paper_account.split("-")
        self.add_account(
            d.paper_app_key, d.paper_app_secret, True, pc, pp, d.hts_id, "김트윈", self.config.initial_cash
        )

    def add_account(
        self,
        app_key: str,
        app_secret: str,
        paper: bool,
        cano: str,
        prdt: str,
        hts_id: str,
        name: str,
        cash: int,
        holdings: dict[str, tuple[int, int]] | None = None,
    ) -> Account:
        key = self.auth.keys.get(app_key)
        if key is None:
            key = AppKey(app_key, app_secret, paper, hts_id=hts_id)
            self.auth.add_key(key)
        acct = Account(cano, prdt, app_key, hts_id or key.hts_id, name, paper, cash)
        for code, (qty, avg) in (holdings or {}).items():
            acct.holdings[code] = Holding(qty=qty, cost=qty * avg, bfdy_qty=qty)
        self.exchange.add_account(acct)
        if acct.account_id not in key.account_ids:
            key.account_ids.append(acct.account_id)
        return acct

    def load_accounts(self, doc: dict[str, Any]) -> None:
        """`{"accounts": [{"app_key", "app_secret", "paper", "cano", "prdt", "hts_id", "name", "cash",
        "holdings": {"005930": {"qty": 10, "avg_price": 70000}}}]}`"""
        for a in doc.get("accounts", []):
            assert isinstance(a, dict)
            holdings = {c: (int(h["qty"]), int(h.get("avg_price", 0))) for c, h in dict(a.get("holdings", {})).items()}
            self.add_account(
                str(a["app_key"]),
                str(a["app_secret"]),
                bool(a.get("paper", False)),
                str(a["cano"]),
                str(a.get("prdt", "01")),
                str(a.get("hts_id", "")),
                str(a.get("name", "트윈")),
                int(a.get("cash", self.config.initial_cash)),
                holdings,
            )

    def account_for(self, key: AppKey, cano: str, prdt: str) -> Account:
        cano, prdt = cano.strip(), (prdt.strip() or "01")
        if not cano:
            raise E_BAD_ACCOUNT
        acct_id = f"{cano}-{prdt}"
        acct = self.exchange.accounts.get(acct_id)
        if acct is None and key.auto:
            # any account number works with an auto-provisioned key (API.md §11)
            acct = self.add_account(
                key.key, key.secret, key.paper, cano, prdt, key.hts_id, "트윈", self.config.initial_cash
            )
        if acct is None or acct.app_key != key.key:
            raise E_BAD_ACCOUNT
        return acct

    def accounts_of(self, key: AppKey) -> list[Account]:
        return [self.exchange.accounts[a] for a in key.account_ids if a in self.exchange.accounts]
