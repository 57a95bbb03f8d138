"""KIS environments as data: base URLs, TR ids, page sizes and limits, chosen by configuration only.

Nothing else in the code branches on real-vs-paper; it asks the `KisEnvironment` for a TR id,
a URL or a limit. TR ids are kept in their real (new) form; the paper form is derived by the
documented rule (first letter T/J/C → V), see API.md §1.2–1.3.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

import msgspec

from common.config import KIS_LIMIT_PER_S, BrokerConfig, BrokerEnv
from kis.port import BrokerUnsupported

REAL_REST_URL = "https://openapi.koreainvestment.com:9443"
PAPER_REST_URL = "https://openapivts.koreainvestment.com:29443"
REAL_WS_URL = "ws://ops.koreainvestment.com:21000"
PAPER_WS_URL = "ws://ops.koreainvestment.com:31000"
WS_PATH = "/tryitout"


class Tr(StrEnum):
    """Logical names of the TRs we use; values are the real (new) TR ids."""

    ORDER_BUY = "TTTC0012U"
    ORDER_SELL = "TTTC0011U"
    ORDER_RVSECNCL = "TTTC0013U"
    DAILY_CCLD = "TTTC0081R"
    BALANCE = "TTTC8434R"
    PSBL_ORDER = "TTTC8908R"
    PSBL_SELL = "TTTC8408R"  # real only
    PRICE = "FHKST01010100"
    ASKING_PRICE = "FHKST01010200"
    DAILY_CHART = "FHKST03010100"
    TIME_CHART = "FHKST03010200"
    INVESTOR = "FHKST01010900"
    VOLUME_RANK = "FHPST01710000"  # real only
    HOLIDAY = "CTCA0903R"  # real only; at most once a day (API.md 4.15)


# The previous ids, which KIS says may be blocked without notice; kept for reference/diagnostics.
OLD_TR_IDS: dict[Tr, str] = {
    Tr.ORDER_BUY: "TTTC0802U",
    Tr.ORDER_SELL: "TTTC0801U",
    Tr.ORDER_RVSECNCL: "TTTC0803U",
    Tr.DAILY_CCLD: "TTTC8001R",
}

PAPER_UNSUPPORTED: frozenset[Tr] = frozenset({Tr.PSBL_SELL, Tr.VOLUME_RANK, Tr.HOLIDAY})


class TrUnsupported(BrokerUnsupported, ValueError):
    """A TR this environment does not offer: the port's typed refusal (a ValueError as before)."""


class Path(StrEnum):
    TOKEN = "/oauth2/tokenP"
    REVOKE = "/oauth2/revokeP"
    APPROVAL = "/oauth2/Approval"
    ORDER_CASH = "/uapi/domestic-stock/v1/trading/order-cash"
    ORDER_RVSECNCL = "/uapi/domestic-stock/v1/trading/order-rvsecncl"
    DAILY_CCLD = "/uapi/domestic-stock/v1/trading/inquire-daily-ccld"
    BALANCE = "/uapi/domestic-stock/v1/trading/inquire-balance"
    PSBL_ORDER = "/uapi/domestic-stock/v1/trading/inquire-psbl-order"
    PSBL_SELL = "/uapi/domestic-stock/v1/trading/inquire-psbl-sell"
    PRICE = "/uapi/domestic-stock/v1/quotations/inquire-price"
    ASKING_PRICE = "/uapi/domestic-stock/v1/quotations/inquire-asking-price-exp-ccn"
    DAILY_CHART = "/uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice"
    TIME_CHART = "/uapi/domestic-stock/v1/quotations/inquire-time-itemchartprice"
    INVESTOR = "/uapi/domestic-stock/v1/quotations/inquire-investor"
    VOLUME_RANK = "/uapi/domestic-stock/v1/quotations/volume-rank"
    HOLIDAY = "/uapi/domestic-stock/v1/quotations/chk-holiday"


class KisEnvironment(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # sim | paper | real (used in cache file names and logs)
    paper: bool  # paper TR ids (V prefix), paper notice TR, paper limits
    rest_url: str
    ws_url: str  # including the path (/tryitout)
    rate_per_s: float  # our budget, kept below the KIS limit
    kis_limit_per_s: float  # what KIS enforces (for documentation/checks)
    balance_page_size: int
    daily_ccld_page_size: int
    max_registrations: int = 41  # websocket TR+key pairs per app key, notice slot included
    notice_tr: str = "H0STCNI0"

    def tr_id(self, tr: Tr) -> str:
        if self.paper:
            if tr in PAPER_UNSUPPORTED:
                raise TrUnsupported(f"{tr.name} ({tr.value}) is not available on paper (모의투자)", code="UNSUPPORTED")
            return paper_tr_id(tr.value)
        return tr.value

    def supports(self, tr: Tr) -> bool:
        return not (self.paper and tr in PAPER_UNSUPPORTED)


def paper_tr_id(tr_id: str) -> str:
    """The official rule: trading/account TR ids starting with T, J or C take a V in paper mode;
    quotation ids (FHK.../FHP...) are the same in both."""
    return "V" + tr_id[1:] if tr_id[:1] in ("T", "J", "C") else tr_id


def _with_ws_path(url: str) -> str:
    parts = urlsplit(url)
    return url if parts.path not in ("", "/") else url.rstrip("/") + WS_PATH


def environment_for(cfg: BrokerConfig, *, sim_paper: bool = False) -> KisEnvironment:
    """Resolve the environment from configuration. `sim` uses the twin's URLs (rest_url/ws_url) and
    real TR ids unless the twin account is a paper one (`sim_paper`)."""
    if cfg.env == BrokerEnv.REAL:
        paper, rest, ws, name = False, REAL_REST_URL, REAL_WS_URL, "real"
    elif cfg.env == BrokerEnv.PAPER:
        paper, rest, ws, name = True, PAPER_REST_URL, PAPER_WS_URL, "paper"
    else:
        if not cfg.rest_url or not cfg.ws_url:
            raise ValueError("env 'sim' needs broker.rest_url and broker.ws_url (the twin's addresses)")
        paper, rest, ws, name = sim_paper, cfg.rest_url, cfg.ws_url, "sim"
    rest = (cfg.rest_url or rest).rstrip("/")
    ws = _with_ws_path(cfg.ws_url or ws)
    # one table of KIS's limits; a configured rate above it is refused at load (common/config.py)
    kis_limit = KIS_LIMIT_PER_S[BrokerEnv.PAPER if paper else BrokerEnv.REAL]
    default_rate = 1.8 if paper else 18.0
    return KisEnvironment(
        name=name,
        paper=paper,
        rest_url=rest,
        ws_url=ws,
        rate_per_s=cfg.rate_per_s if cfg.rate_per_s > 0 else default_rate,
        kis_limit_per_s=kis_limit,
        balance_page_size=20 if paper else 50,
        daily_ccld_page_size=15 if paper else 100,
        notice_tr="H0STCNI9" if paper else "H0STCNI0",
    )


def kis_host_env(url: str) -> BrokerEnv | None:
    """The KIS environment whose own host `url` names (REAL, PAPER; SIM: a KIS host of neither, or of both: the
    websocket host serves both, told apart by port), None: not a KIS host (a twin, a proxy)."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:  # (a port out of range: not ours to judge here)
        return None
    if not (host == "koreainvestment.com" or host.endswith(".koreainvestment.com")):
        return None
    for env, rest, ws in (
        (BrokerEnv.REAL, REAL_REST_URL, REAL_WS_URL),
        (BrokerEnv.PAPER, PAPER_REST_URL, PAPER_WS_URL),
    ):
        if (host, port) in {(urlsplit(u).hostname, urlsplit(u).port) for u in (rest, ws)}:
            return env
        if host == urlsplit(rest).hostname:
            return env  # (its REST host on another port: still that environment's)
    return BrokerEnv.SIM


URL_HINT = "make [broker] env and the URLs name the same KIS environment (or leave the URLs out)"  # (url_problems)


def url_problems(b: BrokerConfig) -> list[tuple[str, str]]:
    """(field, why) of a `rest_url`/`ws_url` that names another environment's KIS host than `b.env`. KIS itself
    under env "sim" (the twin's setting, with the user's credentials: a hunt found it trading the real account
    with the twin's rules: its first start approving every sample card, no rate check, no stock master, `doctor`
    saying "env sim"); the real host under "paper", or paper's under "real" (their TR ids differ)."""
    out = []
    for field, url in (("broker.rest_url", b.rest_url), ("broker.ws_url", b.ws_url)):
        host = kis_host_env(url) if url else None
        if host is None or host is b.env:
            continue
        if b.env is BrokerEnv.SIM:
            to = f'"{host.value}"' if host is not BrokerEnv.SIM else '"real" or "paper"'
            why = f'{url} is KIS itself, and env "sim" is the twin\'s: set [broker] env = {to} to trade a KIS account'
        elif host is BrokerEnv.SIM:
            continue  # (another KIS host: a new one KIS announced, say; the env decides its TR ids)
        else:
            why = f'{url} is KIS\'s {host.value} host, and env is "{b.env.value}": set env = "{host.value}", or the URL'
        out.append((field, why))
    return out
