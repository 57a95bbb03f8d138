"""One loader for "which codes exist": the KIS master files, or the twin's list when none is given."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from common.config import BrokerEnv, BrokerConfig, ConfigError, GatewayConfig
from common.enums import AlertKind
from common.krx_rules import SecurityKind
from kis.master import (
    STAMP,
    MasterCopy,
    MasterError,
    download_master,
    load_copy,
    load_stock_master,
    parse_master,
    read_copy,
    twin_master,
    unzip_master,
)
from kis.sim.master_files import master_zip
from kis.sim.universe import STOCKS
from server.stockmaster import MasterKeeper, copy_folder, downloads, gateway_master


def test_master_files_and_twin_fallback(shared_data: Path) -> None:
    real = load_stock_master(shared_data / "krx_master")
    assert real.strict and len(real.entries) > 2000
    assert real.name("005930") == "삼성전자" and real.entries["005930"].group == "ST"
    twin = load_stock_master(None)
    assert not twin.strict and "005930" in twin and "999990" not in twin
    assert twin.entries["069500"].group == "EF"


def test_gateway_master_choice(tmp_path: Path) -> None:
    assert gateway_master(GatewayConfig()) is not None  # sim: the twin's list
    paper = GatewayConfig(run_dir=str(tmp_path), broker=BrokerConfig(env=BrokerEnv.PAPER))
    assert gateway_master(paper) is None  # no copy yet: the gateway downloads one at start
    assert downloads(paper) and not downloads(msgspec.structs.replace(paper, master_url=""))
    with pytest.raises(ConfigError, match="master_dir"):
        gateway_master(GatewayConfig(master_dir=str(tmp_path)))  # a folder without master files


# ---- the gateway's own copy of KIS's files (paper/real) ------------------------------------------


def test_twin_publishes_its_list_in_kis_layout() -> None:
    twin = twin_master().entries
    for market in ("KOSPI", "KOSDAQ"):
        got = parse_master(unzip_master(master_zip(STOCKS, market), market), market)
        want = {c: e for c, e in twin.items() if e.market == market}
        assert set(got) == set(want)
        assert all((got[c].name, got[c].kind, got[c].board) == (e.name, e.kind, e.board) for c, e in want.items())
    assert twin["069500"].kind is SecurityKind.ETF


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("H", (_Files,), {"files": files})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/common/master", files
    finally:
        srv.shutdown()
        srv.server_close()


def _publish(files: dict[str, bytes]) -> None:
    files["kospi_code.mst.zip"] = master_zip(STOCKS, "KOSPI")
    files["kosdaq_code.mst.zip"] = master_zip(STOCKS, "KOSDAQ")


KST_ = dt.timezone(dt.timedelta(hours=9))


def _at(day: int, hour: int = 9) -> dt.datetime:
    return dt.datetime(2026, 12, day, hour, 0, tzinfo=KST_)


def _with_copy(tmp_path: Path, url: str, at: dt.datetime) -> tuple[GatewayConfig, MasterCopy]:
    """A real account's gateway config whose copy of the master was downloaded from `url` at `at`."""
    cfg = GatewayConfig(run_dir=str(tmp_path), master_url=url, broker=BrokerConfig(env=BrokerEnv.REAL))
    return cfg, asyncio.run(download_master(url, copy_folder(cfg), at))


def test_download_replaces_the_copy_only_when_both_files_are_whole(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    with pytest.raises(MasterError, match="HTTP 404"):
        asyncio.run(download_master(url, tmp_path, _at(4)))
    assert read_copy(tmp_path) is None and not any(tmp_path.iterdir())
    _publish(files)
    copy = asyncio.run(download_master(url, tmp_path, _at(4)))
    assert (copy.day, copy.codes, copy.url) == ("2026-12-04", len(twin_master().entries), url)
    assert read_copy(tmp_path) == copy and len(load_copy(tmp_path, copy)) == copy.codes
    assert oct((tmp_path / "kospi_code.mst").stat().st_mode & 0o777) == "0o600"
    before = (tmp_path / "kospi_code.mst").read_bytes()
    good = files["kosdaq_code.mst.zip"]
    for broken, why in (
        (b"<html>maintenance</html>", "not a readable zip"),
        (good[: len(good) // 2], "not a readable zip"),  # cut short
        (master_zip([], "KOSDAQ"), "no codes"),  # an empty placeholder
    ):
        files["kosdaq_code.mst.zip"] = broken
        with pytest.raises(MasterError, match=why):
            asyncio.run(download_master(url, tmp_path, _at(7)))
        assert read_copy(tmp_path) == copy and (tmp_path / "kospi_code.mst").read_bytes() == before
    files["kosdaq_code.mst.zip"] = good
    with pytest.raises(MasterError, match="truncated list"):  # half the codes the copy has: refused
        asyncio.run(
            download_master(url, tmp_path, _at(7), previous=msgspec.structs.replace(copy, codes=copy.codes * 3))
        )
    with pytest.raises(MasterError, match="ConnectError"):
        asyncio.run(download_master("http://127.0.0.1:9/common/master", tmp_path, _at(4), timeout_s=2))
    # a file cut short on disk (a crash before it reached the disk) is not taken for the copy
    (tmp_path / "kosdaq_code.mst").write_bytes(b"")
    with pytest.raises(MasterError, match="lists no codes"):
        load_copy(tmp_path, copy)


def test_keeper_refreshes_a_stale_copy_and_alerts_when_it_cannot(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    _publish(files)
    cfg, _ = _with_copy(tmp_path, url, _at(1, 9))
    now = [_at(2, 7)]
    installed: list[object] = []
    alerts: list[tuple[str, AlertKind]] = []
    keeper = MasterKeeper(cfg, lambda: now[0], installed.append, lambda t, k: alerts.append((t, k)), timeout_s=2)
    start = gateway_master(cfg)  # yesterday's copy: used at once (a takeover never waits for a download)
    assert start is not None and "KIS master of 2026-12-01" in start.source
    assert start.kinds()["069500"] is SecurityKind.ETF
    assert not keeper.stale()  # 07:00: KIS has not rebuilt its files yet (REFRESH_AT 08:00)
    now[0] = _at(2, 8)
    assert keeper.stale()
    files["kosdaq_code.mst.zip"] = master_zip([x for x in STOCKS if x.market == "KOSDAQ"][:1], "KOSDAQ")  # rebuilt
    asyncio.run(keeper.fetch())
    assert not keeper.stale() and len(installed) == 1 and keeper.copy.day == "2026-12-02"  # type: ignore[union-attr]
    # the host gone for days: the copy stays, the failures count, a person hears once a day from day 3
    files.clear()
    for day in (3, 4, 5, 5):
        now[0] = _at(day)
        with pytest.raises(MasterError):
            asyncio.run(keeper.fetch())
        keeper._maybe_alert()
    assert keeper.failures == 4 and len(installed) == 1 and read_copy(copy_folder(cfg)).day == "2026-12-02"  # type: ignore[union-attr]
    assert len(alerts) == 1 and "3 days old" in alerts[0][0] and alerts[0][1] is AlertKind.STOCK_MASTER
    # master_url changed: the copy serves until one from the new address arrives (stale at once)
    moved = msgspec.structs.replace(cfg, master_url=url + "/other")
    assert gateway_master(moved) is not None
    assert MasterKeeper(moved, lambda: now[0], installed.append, lambda t, k: None).stale()
    # a copy whose stamp is gone is not a copy
    (copy_folder(cfg) / STAMP).unlink()
    assert gateway_master(cfg) is None


def test_the_same_list_again_after_the_rebuild_hour_is_tried_again_until_nine(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    _publish(files)
    cfg, _ = _with_copy(tmp_path, url, _at(1, 10))
    now = [_at(2, 8)]
    keeper = MasterKeeper(cfg, lambda: now[0], lambda m: None, lambda t, k: None, timeout_s=2)
    asyncio.run(keeper.fetch())  # 08:00, KIS has not rebuilt its files: yesterday's bytes
    assert keeper.unchanged and keeper.stale()
    now[0] = _at(2, 9)
    assert not keeper.stale()  # by the open the same list is taken as today's (a day without changes)
    # a new list: current at once
    files["kosdaq_code.mst.zip"] = master_zip([s for s in STOCKS if s.market == "KOSDAQ"][:1], "KOSDAQ")
    now[0] = _at(3, 8)
    asyncio.run(keeper.fetch())
    assert not keeper.unchanged and not keeper.stale()


def test_a_damaged_copy_is_downloaded_again_and_codes_count_once(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    url, files = server
    _publish(files)
    # a code listed in both files (the day it moves market): counted once, the copy still adds up
    samsung = next(s for s in STOCKS if s.code == "005930")
    kosdaq = [s for s in STOCKS if s.market == "KOSDAQ"] + [dataclasses.replace(samsung, market="KOSDAQ")]
    files["kosdaq_code.mst.zip"] = master_zip(kosdaq, "KOSDAQ")
    cfg, copy = _with_copy(tmp_path, url, _at(1))
    assert copy.codes == len(twin_master().entries) and gateway_master(cfg) is not None
    # bytes that are not KIS's layout (a file replaced by hand): not the copy, downloaded again at start
    (copy_folder(cfg) / "kospi_code.mst").write_bytes(b"\xff\xfe\x00broken")
    assert gateway_master(cfg) is None
    for bad in ("http://127.0.0.1:99999999/x", "ftp://127.0.0.1/x", "not a url"):  # a malformed master_url
        with pytest.raises(MasterError):
            asyncio.run(download_master(bad, tmp_path / "other", _at(1), timeout_s=2))


def test_the_days_list_is_waited_for_until_nine_whenever_the_same_list_was_first_downloaded(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    """(a hunt) A second download of the same list cleared the wait (08:00 and 08:10 brought yesterday's, and the
    list KIS published at 08:15 waited a day), and a first download before 08:00 (a Monday 07:30 start) was never
    taken for yesterday's at all. The list first seen before 08:00 is waited past until a new one or 09:00."""
    url, files = server
    _publish(files)
    cfg = GatewayConfig(run_dir=str(tmp_path), master_url=url, broker=BrokerConfig(env=BrokerEnv.REAL))
    now = [dt.datetime(2026, 12, 7, 7, 30, tzinfo=KST_)]
    keeper = MasterKeeper(cfg, lambda: now[0], lambda m: None, lambda t, k: None, timeout_s=2)
    asyncio.run(keeper.fetch())  # a first start at 07:30: the list KIS served then (the day before's)
    assert not keeper.stale()
    for minute in (0, 10):  # 08:00 and 08:10: the same bytes again
        now[0] = dt.datetime(2026, 12, 7, 8, minute, tzinfo=KST_)
        assert keeper.stale()
        asyncio.run(keeper.fetch())
        assert keeper.unchanged and keeper.stale()  # still waiting for the day's list
    again = MasterKeeper(cfg, lambda: now[0], lambda m: None, lambda t, k: None, timeout_s=2)
    assert again.unchanged and again.stale()  # a restart keeps waiting too (the stamp says when it was first seen)
    files["kosdaq_code.mst.zip"] = master_zip([s for s in STOCKS if s.market == "KOSDAQ"][:-1], "KOSDAQ")  # 08:15
    now[0] = dt.datetime(2026, 12, 7, 8, 20, tzinfo=KST_)
    asyncio.run(keeper.fetch())
    assert not keeper.unchanged and not keeper.stale()


def test_one_market_file_cut_short_is_refused_though_the_other_holds_the_count(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    """(a hunt) The truncated-list guard counted both files together: a KOSDAQ file cut to a few lines replaced the
    copy (every KOSDAQ code unlisted for the day) because the KOSPI file kept the total above half."""
    url, files = server
    _publish(files)
    listed = [dataclasses.replace(s, market="KOSDAQ") for s in STOCKS]  # (every code in each file: a long KOSDAQ list)
    files["kosdaq_code.mst.zip"] = master_zip(listed, "KOSDAQ")
    copy = asyncio.run(download_master(url, tmp_path, _at(4)))
    assert copy.markets["KOSDAQ"] == len(STOCKS)
    files["kosdaq_code.mst.zip"] = master_zip(listed[:1], "KOSDAQ")  # cut short at KIS's end: the total holds
    with pytest.raises(MasterError, match="KOSDAQ codes where the copy has"):
        asyncio.run(download_master(url, tmp_path, _at(5), previous=copy))
    assert read_copy(tmp_path) == copy


def test_cards_approve_checks_codes_against_the_folders_kis_master(
    tmp_path: Path, server: tuple[str, dict[str, bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """(a hunt) `cards approve` (and a reload) checked codes against the twin's 24-code list, where an unknown code
    is a warning: on a real account's folder a typo'd code (005931) was approved to trade live, "note: 2 warnings".
    The folder's own copy of KIS's master is the one: an unknown code is an error there, not approved."""
    from tests.unit.test_approve_real_account_asks import REAL, card, folder_of
    from tools.ops.approve import main

    url, files = server
    _publish(files)
    run = folder_of(tmp_path, REAL)
    asyncio.run(download_master(url, run / "master", _at(4)))  # what the real account's gateway keeps there
    typo = card(tmp_path, "typo")
    typo.write_text(typo.read_text().replace('"005930"', '"005931"'))
    assert main([typo], run, yes=True) == 2
    assert "005931: not in the KIS stock master" in capsys.readouterr().err
    assert main([card(tmp_path, "fine")], run, yes=True) == 0  # a code the master lists


def test_a_master_file_in_another_layout_or_empty_is_refused_not_read_shifted(tmp_path: Path) -> None:
    """(a hunt) With one field added to the fixed-width tail, every field was read one place over, silently: every
    ETF a stock (its limit prices off the stock grid denied, its prints dropped, its sells taxed). A file whose lines
    carry no known security group is refused; a master_dir of empty files is too (it started with 0 codes)."""
    from kis.master import load_master_dir

    raw = unzip_master(master_zip(STOCKS, "KOSPI"), "KOSPI")
    eol = b"\r\n" if b"\r\n" in raw else b"\n"
    wider = eol.join(line + b"0" if line else line for line in raw.split(eol))  # one character more a line
    folder = tmp_path / "wider"
    folder.mkdir()
    (folder / "kospi_code.mst").write_bytes(wider)
    with pytest.raises(MasterError, match="no known security group"):
        load_master_dir(folder)
    (folder / "kospi_code.mst").write_bytes(raw)
    assert len(load_master_dir(folder)) == len([s for s in STOCKS if s.market == "KOSPI"])
    (folder / "kospi_code.mst").write_bytes(b"")
    with pytest.raises(MasterError, match="list no codes"):
        load_master_dir(folder)


def test_a_failing_refresh_is_paced_at_retry_s(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    """(a review) A copy first seen before today's rebuild hour and not downloaded again (every download failing)
    read as 'the same list again', and the failures were retried every CHECK_S instead of RETRY_S."""
    from server.stockmaster import CHECK_S, RETRY_S

    url, files = server
    _publish(files)
    cfg, _ = _with_copy(tmp_path, url, _at(1, 10))  # yesterday's copy, first seen yesterday 10:00
    now = [_at(2, 14)]  # today 14:00: stale; suppose every download fails today
    keeper = MasterKeeper(cfg, lambda: now[0], lambda m: None, lambda t, k: None, timeout_s=2)
    assert keeper.stale()
    pace = RETRY_S if keeper.stale() and not keeper.unchanged else CHECK_S  # run()'s sleep after the failure
    assert not keeper.unchanged, "a copy never downloaded again today reads as 'the same list again'"
    assert pace == RETRY_S


def test_cards_approve_reads_the_configs_master_dir_and_says_when_it_has_no_master(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(a review) A real account's folder whose gateway reads master_dir has no copy in RUN/master: approve fell back
    to the twin's list silently. With the gateway's --config it reads that master_dir (a typo'd code refused); without
    it, it says the codes were checked against the twin's list only."""
    from tests.unit.test_approve_real_account_asks import REAL, card, folder_of
    from tools.ops.approve import main

    folder = tmp_path / "kis-master"
    folder.mkdir()
    for market in ("KOSPI", "KOSDAQ"):
        (folder / f"{market.lower()}_code.mst").write_bytes(unzip_master(master_zip(STOCKS, market), market))
    run = folder_of(tmp_path, REAL)
    typo = card(tmp_path, "typo")
    typo.write_text(typo.read_text().replace('"005930"', '"005931"'))
    assert main([typo], run, yes=True, master_dir=str(folder)) == 2
    assert "005931: not in the KIS stock master" in capsys.readouterr().err
    assert main([card(tmp_path, "fine")], run, yes=True) == 0
    assert "checked against the twin's list only" in capsys.readouterr().err


def test_no_overnight_downloads_before_the_rebuild_hour(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    """(a review) After a weekend's same list, "the same list again" held all night: the master was downloaded every
    10 minutes from 00:00 to 08:00, before the list could be rebuilt."""
    url, files = server
    _publish(files)
    cfg, fri = _with_copy(tmp_path, url, _at(4, 8) + dt.timedelta(minutes=5))  # Fri 08:05: Friday's list
    sat = asyncio.run(
        download_master(url, copy_folder(cfg), _at(5, 8) + dt.timedelta(minutes=50), previous=fri)
    )  # Sat 08:50: the same bytes (no rebuild on a Saturday)
    assert sat.seen_since == fri.at
    now = [_at(6, 0) + dt.timedelta(minutes=30)]  # Sunday 00:30
    keeper = MasterKeeper(cfg, lambda: now[0], lambda m: None, lambda t, k: None, timeout_s=2)
    stale_at = []
    for minutes in range(0, 8 * 60, 10):  # Sunday 00:00 .. 07:50
        now[0] = _at(6, 0) + dt.timedelta(minutes=minutes)
        if keeper.stale():
            stale_at.append(now[0].strftime("%H:%M"))
    assert not stale_at, f"{len(stale_at)} downloads before the rebuild hour: {stale_at[:3]}..."
