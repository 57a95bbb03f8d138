"""Which stock master the gateway checks orders against, and keeping it current.

- `master_dir` set: the KIS master files there, kept by the operator (a bad folder stops the gateway
  with a clear error).
- empty, env sim (the twin, embedded or not): the twin's stock list, the codes it can trade.
- empty, env paper/real, `master_url` set (the default, KIS's download folder): the gateway's own copy
  in run_dir/master. A first start without a copy downloads it before serving agents and stops with a
  plain error when it cannot (without the listing an ETF is judged as a stock: its limit prices off
  the stock grid denied, its sells taxed; a typo'd code goes to KIS). A copy from before the latest
  REFRESH_AT is used at once (a standby's takeover never waits for a download) and refreshed in the
  background; so each day (new listings, new ETFs, a code that moved market). A person is alerted when
  the copy is days old and downloads keep failing.
- empty, env paper/real, `master_url` empty: no stock master; logged loudly, codes are not checked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

from common.clock import KST
from common.config import BrokerEnv, ConfigError, GatewayConfig
from common.enums import AlertKind
from kis.master import (
    COPY_FOLDER,
    MasterCopy,
    MasterError,
    StockMaster,
    copy_master,
    download_master,
    load_stock_master,
    read_copy,
)

log = logging.getLogger("ktrader.master")

# KIS rebuilds its master files before the market opens (the hour: UNCONFIRMED): a copy downloaded
# before today's 08:00 KST is yesterday's list, one downloaded after it today's
REFRESH_AT = dt.time(8, 0)
# ... and a download after it that brought yesterday's list back unchanged is tried again, every
# CHECK_S, until LAST_TRY (KIS's files carry daily figures: the same bytes mean not rebuilt yet)
LAST_TRY = dt.time(9, 0)
RETRY_S = 1800.0  # a failed refresh is tried again this much later
CHECK_S = 600.0  # how often a current copy is looked at (the day turns, REFRESH_AT passes)
STALE_DAYS = 3  # a copy this many days old with downloads failing is alerted to a person (once a day)


def downloads(cfg: GatewayConfig) -> bool:
    """Whether this gateway keeps its own copy of KIS's master files."""
    return not cfg.master_dir and cfg.broker.env is not BrokerEnv.SIM and bool(cfg.master_url)


def copy_folder(cfg: GatewayConfig) -> Path:
    return Path(cfg.run_dir) / COPY_FOLDER


def due_since(now: dt.datetime) -> dt.datetime:
    """The latest REFRESH_AT at or before `now`: a copy older than it is stale."""
    now = now.astimezone(KST)
    due = dt.datetime.combine(now.date(), REFRESH_AT, KST)
    return due if now >= due else due - dt.timedelta(days=1)


def own_copy(cfg: GatewayConfig) -> tuple[MasterCopy, StockMaster] | None:
    """The gateway's copy, if there is a whole one (from another master_url too: it is replaced at
    the start, but kept when that download fails)."""
    folder = copy_folder(cfg)
    copy = read_copy(folder)
    if copy is None:
        return None
    try:
        return copy, copy_master(folder, copy)
    except (MasterError, OSError, ValueError) as e:
        log.warning("the stock master copy in %s cannot be used (%s): downloading it again", folder, e)
        return None


def gateway_master(cfg: GatewayConfig) -> StockMaster | None:
    """The master the gateway starts with (None: none yet, or none configured; see the module doc)."""
    if downloads(cfg):
        got = own_copy(cfg)
        if got is None:
            return None  # downloaded at start (MasterKeeper.at_start)
        log.info("stock master: %d codes, %s", len(got[1].entries), got[1].source)
        return got[1]
    if not cfg.master_dir and cfg.broker.env is not BrokerEnv.SIM:
        log.warning(
            "no stock master (master_dir and master_url empty): order codes are not checked and every code "
            "counts as a KOSPI stock (ETF limit prices off the stock grid are denied, ETF sells taxed)"
        )
        return None
    try:
        master = load_stock_master(cfg.master_dir or None)
    except (MasterError, OSError, ValueError) as e:
        raise ConfigError(f"master_dir {cfg.master_dir!r}: {e}") from None
    log.info("stock master: %d codes from %s", len(master.entries), master.source)
    return master


def master_line(master: StockMaster | None, keeper: MasterKeeper | None) -> str:
    """The master in use, for status ("" none), and a refresh that keeps failing."""
    if master is None:
        return ""
    line = f"{master.source}, {len(master.entries):,} codes"
    if keeper is not None and keeper.failures:
        line += f"; refresh failing ({keeper.failures}x): {keeper.last_error}"
    return line


class MasterKeeper:
    """Downloads KIS's master files into run_dir/master and hands each new copy to `install`."""

    def __init__(
        self,
        cfg: GatewayConfig,
        now: Callable[[], dt.datetime],
        install: Callable[[StockMaster], None],
        alert: Callable[[str, AlertKind], None],
        timeout_s: float = 60.0,
    ) -> None:
        self.url = cfg.master_url
        self.folder = copy_folder(cfg)
        self.now = now  # the market clock (KST)
        self.install = install
        self.alert = alert
        self.timeout_s = timeout_s
        got = own_copy(cfg)
        self.copy = got[0] if got is not None else None
        self.failures = 0  # downloads that failed since the last success (status)
        self.last_error = ""
        self._alerted_day = ""

    @property
    def unchanged(self) -> bool:
        """The copy's list is the one KIS served before the day's rebuild hour (the previous day's), downloaded again
        since: tried again until LAST_TRY (whenever it was first downloaded: a second download of the same bytes,
        or a first one before 08:00, stopped the tries, and the list KIS published at 08:15 waited a day: a hunt)."""
        c = self.copy
        if c is None or not c.digest:
            return False
        due = due_since(self.now())  # (downloaded again since the rebuild hour: a copy only older is just stale)
        return dt.datetime.fromisoformat(c.at) >= due > dt.datetime.fromisoformat(c.seen_since)

    def stale(self) -> bool:
        c, now = self.copy, self.now()
        if c is None or c.url != self.url or dt.datetime.fromisoformat(c.at) < due_since(now):
            return True
        # (the rebuild hour to LAST_TRY only: after a weekend's same list the night's downloads cannot bring a new one)
        return self.unchanged and REFRESH_AT <= now.astimezone(KST).time() < LAST_TRY

    async def fetch(self) -> StockMaster:
        """One download; the new copy is installed. MasterError when it failed (the old copy stays)."""
        old = self.copy
        try:
            # (a copy from another master_url says nothing of how long this one's list should be)
            previous = old if old is not None and old.url == self.url else None
            copy = await download_master(self.url, self.folder, self.now(), timeout_s=self.timeout_s, previous=previous)
            master = await asyncio.to_thread(copy_master, self.folder, copy)
        except (MasterError, OSError) as e:
            self.failures += 1
            self.last_error = str(e)
            raise MasterError(str(e)) from None
        self.copy, self.failures, self.last_error = copy, 0, ""
        self.install(master)  # on the event loop: every reader sees the old master or the new one
        log.info("stock master downloaded: %d codes, %s", len(master.entries), master.source)
        return master

    async def at_start(self, have: StockMaster | None) -> None:
        """A first start has no copy: download it now (MasterError if that fails). A copy from another
        master_url is replaced now too, but kept (with a warning) when that fails."""
        if have is None:
            log.info("downloading the KIS stock master from %s", self.url)
            await self.fetch()
        elif self.copy is not None and self.copy.url != self.url:
            log.info("master_url changed (the copy came from %s): downloading from %s", self.copy.url, self.url)
            try:
                await self.fetch()
            except MasterError as e:
                log.warning("keeping the stock master copy of %s from %s: %s", self.copy.day, self.copy.url, e)

    async def run(self) -> None:
        """Keep the copy current: the new day's files once REFRESH_AT passed, retried on failure."""
        while True:
            if self.stale():
                try:
                    await self.fetch()
                except MasterError as e:
                    log.warning("stock master refresh failed (the copy of %s stays): %s", self._day(), e)
                    self._maybe_alert()
                except Exception as e:  # a refresh's trouble never ends the refreshes (nor the gateway)
                    self.failures += 1
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.exception("stock master refresh failed")
            await asyncio.sleep(RETRY_S if self.stale() and not self.unchanged else CHECK_S)

    def _day(self) -> str:
        return self.copy.day if self.copy is not None else "none"

    def _maybe_alert(self) -> None:
        today = self.now().astimezone(KST).date()
        if self.copy is None or self._alerted_day == today.isoformat():
            return
        age = (today - dt.date.fromisoformat(self.copy.day)).days
        if age >= STALE_DAYS:
            self._alerted_day = today.isoformat()
            self.alert(
                f"the KIS stock master copy is {age} days old (of {self.copy.day}) and downloading a new one "
                f"from {self.url} fails ({self.last_error}): new listings are unknown codes; check the network "
                "or set master_dir to a folder holding kospi_code.mst / kosdaq_code.mst",
                AlertKind.STOCK_MASTER,
            )
