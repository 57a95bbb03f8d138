"""ETN codes in the stock master, the universe on a failed ranking, the recorder on a failed write and an
unknown record kind, and a replay that must not download KIS's stock master."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import msgspec
import pytest

from common.clock import KST
from common.config import AgentCard, BrokerConfig, BrokerEnv, GatewayConfig, RiskLimits
from common.enums import AgentState, OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.ids import check_stock_code
from common.krx_rules import SecurityKind
from common.risk_rules import AccountExposure, Exposure, Mandate, MarketView, check_order
from kis.master import STAMP, MasterCopy, load_stock_master
from kis.port import Capability
from kis.reference import normalise_code
from server.recorder import REC, FileStats, FrameKind, Recorder, iter_file, iter_frames, list_days
from server.universe import Universe, UniverseBinder

MASTER = Path(os.environ.get("KTRADER_SHARED", "/work/shared")) / "data" / "krx_master"
needs_master = pytest.mark.skipif(not (MASTER / "kospi_code.mst").exists(), reason="no real KIS master files")

DAY = dt.date(2025, 11, 20)
T0 = int(dt.datetime(2025, 11, 20, 9, 0, tzinfo=KST).timestamp()) * 10**9


# ---- 1. ETNs: the master keys them by the 6-character short code ----------------------------------


@needs_master
def test_etn_master_codes_are_the_short_codes_the_rest_of_ktrader_uses() -> None:
    m = load_stock_master(MASTER)
    etns = {c: e for c, e in m.entries.items() if e.group == "EN"}
    assert len(etns) > 300
    for code, e in etns.items():
        assert check_stock_code(code) == code == e.code  # the order path's StockCode
        assert e.wire_code == "Q" + code and m.entries[code].wire_code == "Q" + code  # as KIS's master spells it
        assert normalise_code(e.wire_code) in m  # volume-rank's code is a listed code
    kinds = m.kinds()
    assert all(kinds[c] is SecurityKind.ETF for c in etns)  # the ETF/ETN grid, no sell tax
    assert m.entries["005930"].wire_code == "005930" and m.entries["005930"].raw_code == ""  # stocks unchanged


@needs_master
def test_an_etn_order_passes_the_gate_on_the_etn_grid() -> None:
    m = load_stock_master(MASTER)
    # the code as volume-rank and the order path carry it (6 characters, KIS's 'Q' prefix stripped)
    code = normalise_code(next(c for c, e in m.entries.items() if e.group == "EN"))
    mandate = Mandate(
        agent_limits=RiskLimits(), account_limits=RiskLimits(), codes={code}, listed=m.entries, listed_source="KIS"
    )
    kind = m.kinds().get(code, SecurityKind.STOCK)  # what the gateway's portfolio.kind(code) answers

    def order(price: int, k: SecurityKind) -> object:
        return check_order(
            code=code,
            side=Side.BUY,
            qty=1,
            price=price,
            order_type=OrderType.LIMIT,
            tif=TimeInForce.DAY,
            mandate=mandate,
            market=MarketView(base_price=10_000, kind=k),
            exp=Exposure(),
            account=AccountExposure(),
        )

    assert order(10_005, kind) is None  # listed, and 10,005 is on the ETN's 5-won grid
    assert order(10_005, SecurityKind.STOCK) is not None  # (as a stock it would be off the 10-won grid)


def test_shares_of_a_code_gone_from_the_master_may_still_be_sold() -> None:
    """A held code missing from the master file (a delisting's last days, a code change, a master read short):
    buying it is refused, selling what is held is not (a stop's exit was denied every 5 s before)."""
    m = load_stock_master(MASTER)
    gone = "999990"
    assert gone not in m.entries
    mandate = Mandate(
        agent_limits=RiskLimits(), account_limits=RiskLimits(), codes={gone}, listed=m.entries, listed_source="KIS"
    )

    def order(side: Side, qty: int, held: int) -> object:
        return check_order(
            code=gone,
            side=side,
            qty=qty,
            price=0,
            order_type=OrderType.MARKET,
            tif=TimeInForce.DAY,
            mandate=mandate,
            market=MarketView(base_price=10_000),
            exp=Exposure(position_qty=held, sellable_qty=held),
            account=AccountExposure(),
        )

    assert order(Side.SELL, 10, held=10) is None
    for side, qty, held in ((Side.BUY, 1, 10), (Side.SELL, 11, 10), (Side.SELL, 1, 0)):
        denial = order(side, qty, held)
        assert denial is not None and denial[0] is ErrorCode.DENIED_UNKNOWN_CODE, (side, qty, denial)


# ---- 2. the universe keeps its last good ranking ----------------------------------------------------


class _Broker:
    capabilities = frozenset({Capability.VOLUME_RANK})

    def __init__(self) -> None:
        self.fail = False

    async def top_by_value(self) -> list[tuple[str, str]]:
        if self.fail:
            raise RuntimeError("EGW00201 rate limited")
        return [(f"00{i:04d}", f"n{i}") for i in range(1, 31)]


class _Subs:
    def __init__(self) -> None:
        self.wants = self.releases = 0

    def want(self, *a: object) -> tuple[None, str]:
        self.wants += 1
        return None, ""

    def release(self, *a: object) -> None:
        self.releases += 1


def _bound(universe: Universe) -> tuple[_Subs, list[Any]]:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[], universe_top=20)
    rec = SimpleNamespace(id="alpha", card=card, state=AgentState.ONLINE, codes=[])
    subs, told = _Subs(), []
    UniverseBinder(
        universe,
        SimpleNamespace(agents={"alpha": rec}),
        subs,
        SimpleNamespace(extra_codes={}),
        lambda a, m: told.append(m),
    )
    universe.want(20)
    return subs, told


def test_one_failed_ranking_keeps_the_last_good_one() -> None:
    broker = _Broker()
    universe = Universe(broker, refresh_s=60, fallback=["005930"])  # type: ignore[arg-type]
    subs, told = _bound(universe)

    async def go() -> None:
        await universe.refresh()
        broker.fail = True
        await universe.refresh()
        broker.fail = False
        await universe.refresh()

    asyncio.run(go())
    assert [(len(m.codes), m.source) for m in told] == [(20, "volume_rank")]  # told once, never codes=[]
    assert subs.wants == 20 and subs.releases == 0  # no release/re-subscribe churn
    assert universe.failures == 1 and universe.codes == [f"00{i:04d}" for i in range(1, 21)]


def test_the_fallback_when_there_never_was_a_ranking_or_it_is_stale() -> None:
    broker = _Broker()
    now = [1000.0]
    universe = Universe(broker, refresh_s=60, fallback=["005930", "000660"], stale_s=3600, clock=lambda: now[0])  # type: ignore[arg-type]
    universe.want(2)

    async def go() -> None:
        broker.fail = True
        assert await universe.refresh() == ["005930", "000660"] and universe.source == "fallback"
        broker.fail = False
        assert await universe.refresh() == ["000001", "000002"] and universe.source == "volume_rank"
        broker.fail = True
        now[0] += 3600  # still within the bound: kept
        assert await universe.refresh() == ["000001", "000002"] and universe.source == "volume_rank"
        now[0] += 1  # older than the bound: the fallback
        assert await universe.refresh() == ["005930", "000660"] and universe.source == "fallback"

    asyncio.run(go())
    assert universe.failures == 3


def test_a_failing_on_change_does_not_end_the_refresh_task() -> None:
    calls: list[list[str]] = []

    def on_change(codes: list[str]) -> None:
        calls.append(codes)
        if len(calls) == 1:
            raise RuntimeError("apply failed")

    universe = Universe(_Broker(), refresh_s=0.01, fallback=[], on_change=on_change)  # type: ignore[arg-type]
    universe.want(3)

    async def go() -> None:
        task = asyncio.create_task(universe.run())
        for _ in range(500):
            await asyncio.sleep(0.01)
            if universe.refreshes >= 3 or task.done():
                break
        assert not task.done(), task.exception()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert universe.refreshes >= 3
    assert calls == [["000001", "000002", "000003"]] * 2  # told again after the failed telling, then not


# ---- 3. the recorder after a failed block write ------------------------------------------------------


class _Flaky:
    """A file whose `fail_on`-th write fails with ENOSPC (a disk full for a moment)."""

    def __init__(self, f: BinaryIO, fail_on: int) -> None:
        self.f, self.n, self.fail_on = f, 0, fail_on

    def write(self, b: bytes) -> int:
        self.n += 1
        if self.n == self.fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _frame(i: int) -> bytes:
    import random

    rnd = random.Random(i)  # varied digits: the deflate stream refers far back
    return (
        "0|H0STCNT0|001|005930^" + "^".join(str(rnd.randint(0, 10 ** rnd.randint(1, 9))) for _ in range(46))
    ).encode()


def test_a_failed_block_write_loses_that_block_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen
    opened: list[object] = []

    def fdopen(fd: int, *a: Any, **k: Any) -> Any:
        f = real_fdopen(fd, *a, **k)
        opened.append(f)
        return _Flaky(f, fail_on=2) if len(opened) == 1 else f  # the first file's 2nd block fails

    monkeypatch.setattr(os, "fdopen", fdopen)
    t = [T0]

    def clock() -> int:
        t[0] += 1000
        return t[0]

    rec = Recorder(tmp_path / "data", clock=clock, block_bytes=1 << 30)
    sent: list[bytes] = []
    lost: list[bytes] = []
    for block in range(6):
        for _ in range(200 if block else 1):
            data = _frame(len(sent) + len(lost))
            (lost if block == 1 else sent).append(data)
            rec.record_ws(data)
        rec.flush()
        assert rec._writer is not None
        rec._writer.submit(lambda: None).result()
    rec.close()
    monkeypatch.undo()
    assert rec.errors == 1
    assert rec.frames == len(sent) + len(lost) and rec.frames_written == len(sent)  # the lost block not counted
    got = [f.data for f in iter_frames(tmp_path, DAY)]
    assert got == sent  # every block but the lost one, in order, exact


def test_the_reader_keeps_what_decoded_before_damage_in_the_same_chunk(tmp_path: Path) -> None:
    raw = b"".join(REC.pack(T0 + i, FrameKind.WS, len(d)) + d for i, d in enumerate(_frame(i) for i in range(50)))
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    p = tmp_path / "frames-1-1.kfr.gz"
    p.write_bytes(z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH) + b"\xff" * 64)  # then a reserved block type
    st = FileStats(p)
    got = list(iter_file(p, st))
    assert len(got) == 50 and st.truncated


# ---- 4. a record kind the reader does not know -------------------------------------------------------


def test_unknown_record_kinds_are_skipped_and_counted(tmp_path: Path) -> None:
    from tools.ops.data_cmd import render_days

    day = tmp_path / "data" / "20261204"
    day.mkdir(parents=True)
    raw = REC.pack(1, 1, 3) + b"abc" + REC.pack(2, 4, 2) + b"zz" + REC.pack(3, 3, 3) + b"def"
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    f = day / "frames-00000000000000000001-1.kfr.gz"
    f.write_bytes(z.compress(raw) + z.flush())
    st = FileStats(f)
    assert [(fr.kind, fr.data) for fr in iter_file(f, st)] == [(FrameKind.WS, b"abc"), (FrameKind.CLOCK, b"def")]
    assert st.frames == 2 and getattr(st, "unknown", None) == 1 and not st.truncated
    (ds,) = list_days(tmp_path)
    assert ds.frames == 2 and getattr(ds, "unknown_records", None) == 1
    assert "1 records of unknown kind skipped" in render_days([ds])


# ---- 5. replay never downloads KIS's stock master ----------------------------------------------------


def _real_cfg(tmp_path: Path) -> GatewayConfig:
    cfg = GatewayConfig(broker=BrokerConfig(env=BrokerEnv.REAL), master_url="http://127.0.0.1:9/master")
    return msgspec.structs.replace(cfg, run_dir=str(tmp_path / "g"), record_market_data=False)


@needs_master
def test_replay_reads_the_recording_gateways_master_copy_or_none(tmp_path: Path) -> None:
    from server.replay import replay_config

    src = tmp_path / "run"
    cfg = _real_cfg(tmp_path)
    no_copy = replay_config(cfg, src)
    assert no_copy.master_url == "" and no_copy.master_dir == ""  # no download; no master
    copy = src / "master"
    copy.mkdir(parents=True)
    for name in ("kospi_code.mst", "kosdaq_code.mst"):
        shutil.copy(MASTER / name, copy / name)
    stamp = MasterCopy(at="2025-11-20T08:05:00+09:00", url=cfg.master_url, codes=1)
    (copy / STAMP).write_bytes(msgspec.json.encode(stamp))
    assert replay_config(cfg, src).master_dir == str(copy)
    # a master the operator keeps, or the twin's list: as configured
    mine = msgspec.structs.replace(cfg, master_dir=str(MASTER))
    assert replay_config(mine, src) is mine
    sim = msgspec.structs.replace(cfg, broker=BrokerConfig(env=BrokerEnv.SIM))
    assert replay_config(sim, src) is sim


def test_a_real_config_replay_starts_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.gateway
    from server.replay import run_replay_gateway

    started: list[server.gateway.Gateway] = []

    class Gateway(server.gateway.Gateway):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            started.append(self)

    monkeypatch.setattr(server.gateway, "Gateway", Gateway)
    src = tmp_path / "run"
    rec = Recorder(src / "data", clock=lambda: T0)
    rec.record_ws(b"0|H0STCNT0|001|005930^090001^70000")
    rec.close()
    cfg = _real_cfg(tmp_path)

    async def go() -> None:
        task = asyncio.create_task(run_replay_gateway(cfg, src, DAY, 0, 0))
        for _ in range(600):
            await asyncio.sleep(0.05)
            if task.done() or (Path(cfg.run_dir) / "gateway.json").exists():
                break
        assert not task.done(), task.exception()  # a failed master download stopped it before
        assert (Path(cfg.run_dir) / "gateway.json").exists()
        assert not (Path(cfg.run_dir) / "master").exists()  # nothing downloaded
        started[0].stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(go())


def test_a_ranking_failing_in_the_session_is_told_once_and_its_return_too() -> None:
    """An hour of failed refreshes showed nowhere: the status has universe_* counters, and a person is told after
    FAILING_ALERT failures in a row during the session (not at night: a ranking not served then paged someone
    every night), and once when it answers again."""
    from server.universe import FAILING_ALERT

    broker = _Broker()
    universe = Universe(broker, refresh_s=60, fallback=["005930"])  # type: ignore[arg-type]
    universe.want(2)
    told: list[tuple[str, bool]] = []
    universe.alert = lambda text, back: told.append((text, back))
    session = [False]
    universe.matters = lambda: session[0]

    async def go() -> None:
        await universe.refresh()
        broker.fail = True
        for _ in range(FAILING_ALERT + 5):  # the night
            await universe.refresh()
        assert told == [] and universe.counters()["universe_failures"] == FAILING_ALERT + 5
        session[0] = True
        for _ in range(FAILING_ALERT):  # the session: told as the count reaches FAILING_ALERT
            await universe.refresh()
        assert len(told) == 1
        session[0] = False  # the session ended with the streak at its count: the night pages nobody again
        for _ in range(5):
            await universe.refresh()
        assert len(told) == 1
        broker.fail = False
        await universe.refresh()

    asyncio.run(go())
    assert [back for _, back in told] == [False, True] and "failed 10 refreshes in a row" in told[0][0]
    c = universe.counters()
    assert c["universe_failing_in_a_row"] == 0 and c["universe_ranking_age_s"] >= 0 and c["universe_on_fallback"] == 0
