"""Config types: one Struct per thing, decoded from TOML with unknown fields refused.

`GatewayConfig` (the file given with `ktrader gateway --config`; no file is looked for otherwise:
without --config the gateway runs on the defaults, the embedded KIS twin) and `AgentCard`
(cards/<id>.toml). JSON Schema for editors: `ktrader cards schema` / `json_schema()`.
"""

from __future__ import annotations

import math
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from common.enums import AgentMode, AlertKind, BarInterval
from common.ids import AgentId, StockCode

Krw = Annotated[int, msgspec.Meta(ge=0, description="integer KRW")]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
Pct = Annotated[float, msgspec.Meta(ge=0, le=1000, description="percent (5 = 5 %)")]
# Every duration has a finite upper bound: TOML allows `inf` (and `nan`), which passed a lower bound alone and then
# either crashed the start in int(x * 1e9) (exit 1, the field unnamed) or slept a loop for ever (day_tick_s = inf:
# no close, no end of day). A day is far beyond any sane wait, grace or window; 0 (where allowed) is "off".
MAX_SECONDS = 86_400.0
# intervals a loop sleeps: 0 would busy-loop a core (day_tick_s = 0 ran at 100 % CPU); above an hour the loop is as
# good as off (the day cycle would miss the close, the lease loop its run-folder watch)
Interval = Annotated[float, msgspec.Meta(ge=0.1, le=3600, description="seconds, 0.1 to 3600")]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS, description="seconds, more than 0, at most a day")]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS, description="seconds, 0 to a day")]
HHMM = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM KST")]


class ConfigError(ValueError):
    """A config or card that cannot be used; the message names the file and the field."""


class BrokerEnv(StrEnum):
    SIM = "sim"  # the built-in KIS twin, no credentials
    PAPER = "paper"  # 모의투자
    REAL = "real"  # 실전투자


class SimClock(StrEnum):
    """The embedded twin's clock (the values of kis.sim.clock.ClockMode that a config may name;
    `common` imports nothing of ours, so the twin's enum is mirrored here and converted there)."""

    KST = "kst"  # KST wall time: the market is open only in KRX hours
    OPEN = "open"  # always in the continuous session, whatever the hour
    REPLAY = "replay"


# What KIS enforces per app key (API.md §1: 20 REST calls/s real, 2/s paper); a configured rate above
# it is refused at load (kis/env.py uses the same numbers for its defaults).
KIS_LIMIT_PER_S: dict[BrokerEnv, float] = {BrokerEnv.REAL: 20.0, BrokerEnv.PAPER: 2.0}


class BrokerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    env: BrokerEnv = BrokerEnv.SIM
    # TOML file outside the repo with app_key, app_secret, account (CANO-ACNT_PRDT_CD), hts_id.
    # Environment variables KTRADER_KIS_APP_KEY / _APP_SECRET / _ACCOUNT / _HTS_ID win over it.
    credentials_file: str = ""
    rest_url: str = ""  # override the environment's base URL (the embedded twin sets this)
    ws_url: str = ""
    # 0: environment default (18/s real, 1.8/s paper, 18/s sim); KIS's limit (20/s real, 2/s paper) or more
    # is refused at load: KIS would answer the excess with EGW00201 errors, which count to the kill switch
    # (at most a million/s: finite for inf, and far above any throttle a twin bench wants)
    rate_per_s: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 0.0
    request_timeout_s: Timeout = 5.0
    # A PEM file of extra CA certificates trusted for KIS's TLS (e.g. a company proxy that inspects
    # TLS), added to the default store. "" = the default store only.
    ca_bundle: str = ""
    # Transient failures at start (DNS, refused, timeout, KIS 5xx) are retried this many times with
    # back-off doubling from start_backoff_s (capped at 30 s); then the gateway exits (code 5).
    start_retries: Annotated[int, msgspec.Meta(ge=0)] = 6
    start_backoff_s: Seconds = 2.0
    # How long the gateway's start waits for the real-time session before serving anyway (orders
    # wait for it; the first READY triggers a reconciliation). Short, so a restart is quick.
    start_wait_s: Seconds = 0.5
    # env = "sim" with rest_url/ws_url (a twin in another process, `ktrader sim`): its admin API, so the
    # gateway follows the twin's market clock (an `open` twin trades whatever the hour); "" = KST wall time
    admin_url: str = ""
    sim_seed: int = 7  # embedded twin only
    sim_clock: SimClock = SimClock.OPEN  # embedded twin only: kst | open | replay


class DrawdownPeak(StrEnum):
    """The equity peak a drawdown is measured from."""

    DAY = "day"  # the highest equity since the start of the trading day
    ALL_TIME = "all_time"  # the highest equity ever seen (`ktrader control reset_peak` starts it again)


class RiskLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Per-agent (card) or global (gateway) limits. 0 means 'no limit of this kind'.

    The gateway's apply across the account (every agent, and shares held outside ktrader); a card's
    are the same limits on the agent's own share, so they can only be tighter. Percentages are of the
    account's equity (server/equity.py: the broker's settlement cash, moved by the fills booked since,
    plus every position at the last price), except the drawdown of an agent, measured on its own
    equity: its budget plus its net P&L (a card needs a budget for it)."""

    max_order_value: Krw = 0  # notional of one order
    max_position_value: Krw = 0  # per code, at cost
    # (non-negative: -1 read as "unlimited" passed every check, then denied every order)
    max_open_orders: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_orders_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_daily_loss: Krw = 0
    max_gross_exposure_pct: Pct = 0.0  # positions at the last price + open buys, % of equity
    max_positions: Annotated[int, msgspec.Meta(ge=0)] = 0  # codes held or being bought
    max_code_pct: Pct = 0.0  # one code, % of equity (the gateway's: every agent's together)
    max_sector_pct: Pct = 0.0  # one sector of the stock master, % of equity
    max_drawdown_pct: Pct = 0.0  # equity this far below its peak: REDUCING (only risk-reducing orders)
    halt_drawdown_pct: Pct = 0.0  # ... this far below: HALTED (cancels only)
    drawdown_peak: DrawdownPeak = DrawdownPeak.DAY
    cash_reserve: Krw = 0  # cash no buy may use (the gateway's: the account's; a card's: of its budget)


def limit_problems(lim: RiskLimits, budget: int | None = None) -> list[tuple[str, str]]:
    """(field, why) for limits that cannot work as written; `budget` None for the gateway's limits."""
    out = []
    if lim.halt_drawdown_pct and lim.max_drawdown_pct and lim.halt_drawdown_pct < lim.max_drawdown_pct:
        out.append(
            (
                "risk.halt_drawdown_pct",
                f"{lim.halt_drawdown_pct:g} % halts before max_drawdown_pct "
                f"{lim.max_drawdown_pct:g} % reduces: it must be at least as deep",
            )
        )
    if budget is not None and not budget and (lim.max_drawdown_pct or lim.halt_drawdown_pct):
        out.append(
            ("risk.max_drawdown_pct", "an agent's drawdown is of its own equity (budget + net P&L): give it a budget")
        )
    if budget is not None and not budget and lim.cash_reserve:
        # (the gate measures it on the budget: without one it was ignored live, unsaid, and applied by a backtest,
        # whose budget is its cash: a hunt)
        out.append(
            (
                "risk.cash_reserve",
                "an agent's cash reserve is of its budget: give it a budget (or set the account's in the gateway's "
                "[risk])",
            )
        )
    if budget is not None and budget and lim.cash_reserve >= budget:
        out.append(("risk.cash_reserve", f"{lim.cash_reserve:,} is the whole budget {budget:,}: no buy could pass"))
    return out


class Costs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What the account pays per fill, booked per agent (see common.costs for rounding)."""

    commission_ppm: Annotated[int, msgspec.Meta(ge=0, lt=1_000_000)] = 150  # 0.015 % each side
    # None: the KRX rules' sell tax for the day, market and kind (0.20 % on KOSPI/KOSDAQ sells in 2026, none on
    # ETFs; common/krx_rules.py); a number: that flat rate on every taxable sell instead
    sell_tax_ppm: Annotated[int, msgspec.Meta(ge=0, lt=1_000_000)] | None = None


class WebhookShape(StrEnum):
    JSON = "json"  # {"kind", "agent", "subject", "text", "ts", "gateway"}: for your own receiver
    TELEGRAM = (
        "telegram"  # Bot API sendMessage: {"chat_id", "text"}; url https://api.telegram.org/bot<TOKEN>/sendMessage
    )
    SLACK = "slack"  # incoming webhook: {"text"}


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    # The URL often holds a secret (a bot token, a Slack hook path): give the name of an environment
    # variable that holds it (`url_env`) rather than the URL itself. It is never logged.
    url: str = ""
    url_env: str = ""
    shape: WebhookShape = WebhookShape.JSON
    chat_id: str = ""  # telegram only
    timeout_s: Timeout = 5.0  # the connect, and the message's write
    answer_s: Timeout = 60.0  # its answer once the message is sent (a receiver may work before it answers)


class SmtpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    sender: str
    to: list[str]
    starttls: bool = False  # upgrade with STARTTLS before logging in
    ssl: bool = False  # SMTPS (usually port 465)
    username: str = ""
    password_env: str = ""  # the name of the environment variable holding the password (never in the file)
    timeout_s: Timeout = 10.0  # each command before the message (the connect, the greeting, TLS, the login)
    data_reply_s: Timeout = 180.0  # the answer to the message's end: the server's checks (RFC 5321: up to 10 min)
    # a CA bundle (PEM) to trust beyond the system's, for a server whose certificate they do not vouch for (a
    # company's own mail server); "": the system's. The server's certificate is always checked under ssl/starttls
    ca_file: str = ""


class NotifyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Alerts that reach a person (server/notifier.py). No channel configured: alerts stay on the
    console and the web page."""

    webhooks: list[WebhookConfig] = []
    smtp: list[SmtpConfig] = []
    kinds: list[AlertKind] = []  # which kinds are sent ([]: all)
    dedup_s: Seconds = 600.0  # the same alert (kind, agent, subject) once per this long
    max_per_minute: Annotated[int, msgspec.Meta(gt=0)] = (
        6  # per channel; more are counted and summarised in the next one
    )
    queue_size: Annotated[int, msgspec.Meta(gt=0)] = (
        200  # alerts waiting to be sent; beyond it they are dropped and counted
    )
    session_down_s: Timeout = 60.0  # broker session not ready this long: an alert
    # free space on the run folder's disk under this (MB): an alert, long before a full disk stops the gateway
    # (its store cannot commit); 0: not watched
    min_free_mb: Annotated[int, msgspec.Meta(ge=0)] = 1024
    stale_data_s: Timeout = 60.0  # no real-time message this long in the continuous session
    # The dead-man's switch: a healthchecks.io-style URL pinged every heartbeat_s from the gateway's lease
    # loop, so a gateway that died or hangs stops pinging and that service pages someone (set its period to
    # heartbeat_s and a grace of a few periods). "GET" (the default) or "POST" (the body names the gateway and
    # its pid). The URL is a secret (the check's id): give the name of an environment variable that holds it
    # (heartbeat_url_env) rather than the URL itself. It is never logged. "": no heartbeat.
    heartbeat_url: str = ""
    heartbeat_url_env: str = ""
    heartbeat_s: Timeout = 60.0
    heartbeat_method: Annotated[str, msgspec.Meta(pattern="^(GET|POST)$")] = "GET"


class WebConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """`ktrader web`: the dashboard process (it talks to the gateway like the console does)."""

    host: str = "127.0.0.1"  # loopback only unless you mean it (then put TLS in front of it)
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    token: str = ""  # "" : a new one is generated and printed at each start (KTRADER_WEB_TOKEN wins)


class TrustConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Who may speak to the gateway and under which limits (common/credentials.py, common/approvals.py)."""

    # The gateway's first start on a run folder approves the cards in this folder (the operator who
    # starts it approves them) and issues their agents' credentials; later, `ktrader cards approve`.
    cards_dir: str = "cards"
    # A request whose timestamp is further than this from the gateway's clock is refused (STALE_MESSAGE);
    # one whose (sender session, message id) was seen already is refused too (REPLAYED).
    freshness_s: Timeout = 30.0


class AccountLimits(RiskLimits, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The gateway's limits across the whole account, finite by default (a gateway without a config, or
    a [risk] section naming only some limits, is never unlimited by accident; 0 still means none).
    Per agent, the operator's approved card narrows them further."""

    max_order_value: Krw = 50_000_000
    max_position_value: Krw = 300_000_000
    # (redeclared with RiskLimits' bounds: a plain int let -1, "unlimited", deny every order)
    max_open_orders: Annotated[int, msgspec.Meta(ge=0)] = 500
    max_orders_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 600
    max_daily_loss: Krw = 30_000_000


class GatewayConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    run_dir: str = "run"
    # Endpoints: ipc by default (under run_dir/ipc); tcp://127.0.0.1:PORT for other hosts.
    router_endpoint: str = ""
    pub_endpoint: str = ""
    # a silent agent loses its lease after this long (4 missed heartbeats); more than heartbeat_s
    lease_s: Interval = 1.0
    heartbeat_s: Interval = 0.25  # agents heartbeat at this interval (told at registration)
    max_frame_bytes: PositiveInt = 1 << 20
    # periodic reconciliation with the broker (also at start, after gaps, on demand); stretched so that
    # whole passes take at most a tenth of the time (server/reconciler.py periodic_wait), and then the
    # unfilled list alone is read this often between them (a lost fill notice shows at once)
    # (at least 1 s: 0 ran 151 whole passes in 10 s, each several KIS calls)
    reconcile_s: Annotated[float, msgspec.Meta(ge=1, le=MAX_SECONDS)] = 30.0
    # After the close, the day's bought/sold/costs are compared with KIS's own figures (inquire-balance
    # thdt_*, server/cash_check.py; their meaning on a real account is UNCONFIRMED): false turns it off
    daily_cash_check: bool = True
    # An order whose submit outcome is unknown and that the broker's order list does not show is
    # declared never placed only after this long (KIS's list can lag, API.md §8.15).
    unknown_grace_s: Seconds = 600.0
    # A revise or cancel whose answer was lost is looked up in the broker's order list at once; one the
    # list still does not show after this long never reached the broker (the order keeps its terms).
    amend_grace_s: Timeout = 10.0
    # A fill booked from a notice that the broker's order list does not show is held as unconfirmed
    # this long (the list can lag behind notices), then taken back with an alert.
    fill_confirm_grace_s: Seconds = 60.0
    # An order still queued for the broker after this long is refused, never sent (BROKER_BUSY): a
    # decision made on prices this old is not the one the agent made (0 = send however late).
    max_send_wait_s: Seconds = 5.0
    day_tick_s: Interval = 1.0  # how often the day cycle looks at the market clock (end of day, close, new day)
    # automatic kill switch: this many broker errors/rejections ...
    kill_errors: Annotated[int, msgspec.Meta(ge=0)] = 10
    kill_window_s: Timeout = 60.0  # ... within this window halt all trading (0 errors = off)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    risk: AccountLimits = msgspec.field(default_factory=AccountLimits)  # across the account
    # (no `account_budget`: it was read by nothing while it looked like a cap; a config naming it is refused as an
    # unknown field: `ktrader cards check --account-budget` checks the cards' budgets against the account's money)
    record_market_data: bool = True  # every KIS websocket frame to run_dir/data/<YYYYMMDD>/ (server/recorder.py)
    # recorded days older than this are deleted (0: keep all)
    data_retention_days: Annotated[int, msgspec.Meta(ge=0)] = 30
    master_dir: str = ""  # folder with kospi_code.mst / kosdaq_code.mst (kept by you); "" = see master_url
    # KIS's download folder of kospi_code.mst.zip / kosdaq_code.mst.zip (the official sample
    # stocks_info/kis_kospi_code_mst.py): with master_dir empty, a paper/real gateway keeps its own copy
    # in run_dir/master, downloaded at its first start and again each day; "" = never (no stock master:
    # every code counts as a KOSPI stock). The twin (env sim) uses its own stock list.
    master_url: str = "https://new.real.download.dws.co.kr/common/master"
    # top-by-trading-value universe (cards with universe_top > 0): re-ranked hourly or twice a day is a real choice
    universe_refresh_s: Annotated[float, msgspec.Meta(ge=0.1, le=MAX_SECONDS, description="seconds, 0.1 to a day")] = (
        60.0
    )
    universe_fallback: list[StockCode] = []  # while volume-rank fails, or where none is offered (paper)
    costs: Costs = msgspec.field(default_factory=Costs)
    # an agent silent this long after its lease ran out is offline (listed as such while it holds
    # positions or orders; the gateway acts for it on the operator's request)
    offline_after_s: Timeout = 10.0
    equity_every_s: Timeout = 60.0  # per-agent equity snapshot to the store
    # the broker's account (cash) is read this often for the account's equity, drawdown and cash
    # reserve (server/equity.py); between reads the fills the books record move the cash
    account_every_s: Timeout = 30.0
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    web: WebConfig = msgspec.field(default_factory=WebConfig)
    trust: TrustConfig = msgspec.field(default_factory=TrustConfig)


class EndOfDay(StrEnum):
    CANCEL = "cancel"  # cancel open orders before the close
    FLATTEN = "flatten"  # cancel, then sell positions
    HOLD = "hold"  # leave orders to expire, keep positions


class OnError(StrEnum):
    CONTINUE = "continue"  # report and keep running
    PAUSE = "pause"  # report and stop sending orders until resumed
    STOP = "stop"  # report and exit the agent


RATE_QUOTA_MAX = 1_000.0  # queries a second: far beyond any KIS budget (20/s real), and finite


class Schedule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    # from when the agent's own orders for the day's session are taken (a time of a normal day, open 09:00;
    # moved as the session opens late): before it the risk gate refuses them (DENIED_SCHEDULE), live and in
    # a backtest on intraday bars (daily bars have no time of day). The gateway's exits (protective,
    # flatten), cancels and next-session orders for a later day are not held back. An order placed in the opening call
    # (08:30-09:00) trades at the open: a start at or before 09:00 (the default) takes orders from the
    # opening call on; "09:01" or later sits out the opening auction (common/risk_rules.py before_start)
    start: HHMM = "09:00"
    end: HHMM = "15:20"
    end_of_day: EndOfDay = EndOfDay.CANCEL

    def __post_init__(self) -> None:
        if self.end <= self.start:  # (HH:MM compare as times) it could never place a buy of its own
            raise ValueError(f"schedule end {self.end} is not after its start {self.start}")


class Subscriptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    trades: bool = True  # H0STCNT0 for every code of the card
    book: bool = False  # H0STASP0 for every code of the card
    # > 0: while the gateway refuses a code's trade registration (all websocket slots in use,
    # SUBSCRIPTION_LIMIT), REST-poll its quote at this interval on the card's rate_quota_per_s and
    # deliver changes as on_trade (PolledTrade, tick.polled); an opt-in fallback, see agent/quotepoll.py
    poll_quotes_s: Seconds = 0.0
    # while a registration is refused, ask the gateway for it again this often (0: never; the agent
    # then waits for a restart). Granted: polling stops and the stream takes over.
    resubscribe_s: Seconds = 30.0
    # closed bars to receive (on_bar) for every code; built by the gateway from the trade stream
    bars: list[BarInterval] = []
    conflate: bool = False  # deliver only the newest trade/book per topic of each socket drain


class AgentCard(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    id: AgentId
    name: str
    strategy: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:Class")]
    codes: list[StockCode] = []
    params: dict[str, Any] = {}
    budget: Krw = 0
    risk: RiskLimits = msgspec.field(default_factory=RiskLimits)
    subscriptions: Subscriptions = msgspec.field(default_factory=Subscriptions)
    # this agent's share of the REST budget (queries it causes) per second; 0: no share of its own (only the gateway's
    # budget holds it back). Negative, NaN or infinite are refused (they passed the card check, NaN and inf were
    # reported approved and then refused at registration, a negative one removed the cap unsaid)
    rate_quota_per_s: Annotated[float, msgspec.Meta(ge=0, le=RATE_QUOTA_MAX)] = 1.0
    schedule: Schedule = msgspec.field(default_factory=Schedule)
    mode: AgentMode = AgentMode.LIVE
    on_error: OnError = OnError.CONTINUE
    # an order decided longer ago than this when the gateway was lost is not sent once it is back (it
    # ends DENIED in the agent, the strategy is told): a decision minutes old is not the strategy's any more
    resend_within_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    description: str = ""
    # > 0: the agent trades the gateway's universe, the top N by trading value (refreshed during the
    # session), besides its `codes`; at most 30: KIS's volume ranking returns 30 rows and cannot page (API.md
    # volume-rank), so a card asking for more got 30 without a word
    universe_top: Annotated[int, msgspec.Meta(ge=0, le=30)] = 0


T = TypeVar("T")


def decode_text(data: bytes, source: str) -> str:
    """The text of a config/card file: UTF-8, a leading BOM (Windows Notepad) dropped. Anything else
    (a file saved as CP949/EUC-KR with Korean comments) is a ConfigError saying how to fix it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{source}: not UTF-8 (byte {e.start}; CP949/EUC-KR?): save it as UTF-8 and start again"
        ) from None


def decode_toml(data: bytes | str, type_: type[T], source: str = "<string>") -> T:
    """Decode TOML into a config Struct; every problem becomes a ConfigError naming source and field."""
    text = decode_text(data, source) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_card(path: str | Path) -> AgentCard:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read card: {e.strerror}") from None
    card = decode_toml(data, AgentCard, str(p))
    if len(set(card.codes)) != len(card.codes):
        raise ConfigError(f"{p}: `$.codes` lists a code twice")
    return card


def load_gateway_config(path: str | Path | None, check_env: bool = False) -> GatewayConfig:
    """The gateway config at `path` (None: the defaults). `check_env`: also that the variables its alert
    channels read (url_env, password_env) are set — for the gateway and doctor; the operator's other
    tools read the config for its run_dir and run where those secrets are not."""
    if path is None:
        return GatewayConfig()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    cfg = expand_paths(decode_toml(data, GatewayConfig, str(p)))
    problems = [
        *limit_problems(cfg.risk),
        *gateway_problems(cfg),
        *notify_problems(cfg.notify, os.environ if check_env else None),
    ]
    for field, why in problems:
        raise ConfigError(f"{p}: `{field}`: {why}")
    return cfg


def expand_paths(cfg: GatewayConfig) -> GatewayConfig:
    """`~` in every path field, once at load: nothing downstream expands it (run_dir = "~/kt" made a
    folder named `~` in the working directory)."""

    def ex(path: str) -> str:
        return os.path.expanduser(path) if path else path

    broker = msgspec.structs.replace(
        cfg.broker, credentials_file=ex(cfg.broker.credentials_file), ca_bundle=ex(cfg.broker.ca_bundle)
    )
    trust = msgspec.structs.replace(cfg.trust, cards_dir=ex(cfg.trust.cards_dir))
    return msgspec.structs.replace(
        cfg, run_dir=ex(cfg.run_dir), master_dir=ex(cfg.master_dir), broker=broker, trust=trust
    )


def endpoint_problem(endpoint: str) -> str:
    """Why a gateway endpoint cannot be bound as written ("" none): a tcp:// port outside 1..65535, which libzmq
    takes modulo 65536 (tcp://127.0.0.1:99999 listened on 34463 without a word). ZMQ's `*` and 0 (any port) pass."""
    if not endpoint.startswith("tcp://"):
        return ""
    port = endpoint.rpartition(":")[2]
    if port.isdigit() and int(port) > 65535:  # (0, as `*`, lets the system pick a free port: written to gateway.json)
        return f"{endpoint}: the port {port} is not one of 1..65535 (or 0: any free one)"
    return ""


def gateway_problems(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """(field, why) for settings that pass their own bounds but cannot work together."""
    out = [
        (field, why)
        for field, endpoint in (("router_endpoint", cfg.router_endpoint), ("pub_endpoint", cfg.pub_endpoint))
        if (why := endpoint_problem(endpoint))
    ]
    if not cfg.run_dir.strip():  # "" is the working directory: the gateway took it over (chmod of all it holds)
        out.append(("run_dir", 'is empty: give the run folder (e.g. "run")'))
    if cfg.heartbeat_s >= cfg.lease_s:
        out.append(
            (
                "heartbeat_s",
                f"{cfg.heartbeat_s:g} s is not shorter than lease_s {cfg.lease_s:g} s: every agent would lose "
                "its lease between two heartbeats (keep heartbeat_s at most a quarter of lease_s)",
            )
        )
    limit = KIS_LIMIT_PER_S.get(cfg.broker.env)
    rate = cfg.broker.rate_per_s
    # kis/budget.py spaces calls 1/rate apart, so one second can hold floor(rate)+1 of them: the rate
    # must stay below the limit (20/s would put 21 calls into some second)
    if limit is not None and math.floor(rate) + 1 > limit:
        out.append(
            (
                "broker.rate_per_s",
                f"{rate:g}/s is not below KIS's limit of {limit:g}/s (REST calls) on {cfg.broker.env.value}: "
                f"calls spaced 1/{rate:g} s apart put {math.floor(rate) + 1} into some second, and KIS refuses the "
                f"excess (the refusals count towards the kill switch). Set it below {math.floor(limit):g} "
                f"(e.g. {math.floor(limit) - 0.1:g}), or 0 for the default",
            )
        )
    return out


def channel_url(url: str, url_env: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL an alert channel posts to, as checked at load and as sent: `url_env`'s value (in `environ`, default
    os.environ) or `url`, without surrounding whitespace (a CRLF env file leaves a '\r' that the load check passed and
    every send then failed on)."""
    return ((os.environ if environ is None else environ).get(url_env, "") if url_env else url).strip()


def url_problem(url: str) -> str:
    """Why `url` cannot be posted to ("" none): not http(s), no host, a port that is not a number. Never quotes it
    (it often holds a secret). Retried at each alert, such a URL only ever said 'not delivered'."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        return f"the URL cannot be read ({str(e).split(':')[0]})"
    if parts.scheme not in ("http", "https"):
        return "the URL must start with https:// (or http://)"
    if not parts.hostname:
        return "the URL has no host"
    return ""


def notify_problems(cfg: NotifyConfig, environ: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """(field, why) for alert channels that could never deliver (they would pass the start, and the
    first alert a person needs would be lost). `environ` is where url_env/password_env are read (None:
    not checked)."""
    out = []
    for i, w in enumerate(cfg.webhooks):
        where = f"notify.webhooks[{i}]"
        if w.url and w.url_env:
            out.append((where, "give url or url_env, not both"))
        elif w.url_env and environ is not None and not channel_url("", w.url_env, environ):
            out.append((f"{where}.url_env", f"the environment variable {w.url_env} is not set (it holds the URL)"))
        elif not w.url and not w.url_env:
            out.append((where, f"a {w.shape.value} webhook needs url_env (the name of a variable holding the URL)"))
        url = channel_url(w.url, w.url_env, environ) if w.url or environ is not None else ""
        if url and (why := url_problem(url)):
            out.append((f"{where}.{'url' if w.url else 'url_env'}", why))
        if w.shape is WebhookShape.TELEGRAM and not w.chat_id:
            out.append((f"{where}.chat_id", "a telegram webhook needs chat_id (the chat the bot writes to)"))
    hb = (
        channel_url(cfg.heartbeat_url, cfg.heartbeat_url_env, environ)
        if cfg.heartbeat_url or environ is not None
        else ""
    )
    if hb and not (cfg.heartbeat_url and cfg.heartbeat_url_env) and (why := url_problem(hb)):
        out.append((f"notify.{'heartbeat_url' if cfg.heartbeat_url else 'heartbeat_url_env'}", why))
    if cfg.heartbeat_url and cfg.heartbeat_url_env:
        out.append(("notify.heartbeat_url", "give heartbeat_url or heartbeat_url_env, not both"))
    elif cfg.heartbeat_url_env and environ is not None and not channel_url("", cfg.heartbeat_url_env, environ):
        out.append(
            (
                "notify.heartbeat_url_env",
                f"the environment variable {cfg.heartbeat_url_env} is not set (it holds the heartbeat URL)",
            )
        )
    for i, m in enumerate(cfg.smtp):
        where = f"notify.smtp[{i}]"
        if not m.to:
            out.append((f"{where}.to", "no recipient"))
        if m.username and not m.password_env:
            out.append((f"{where}.password_env", "username is set: give password_env (a variable holding it)"))
        elif m.password_env and environ is not None and not environ.get(m.password_env):
            out.append(
                (f"{where}.password_env", f"the environment variable {m.password_env} (the password) is not set")
            )
        if m.ssl and m.starttls:
            out.append((where, "ssl and starttls together: pick one (ssl for port 465, starttls for 587)"))
    return out


def json_schema(type_: type = AgentCard) -> dict[str, Any]:
    return msgspec.json.schema(type_)
