"""KIS websocket answers nobody planned for (ws2 hunt). A frame whose count says fewer records than it carries lost
the rest without a word (a fill notice; two legacy notices read as one, its price from the next one's order
number): every whole record is read and the frame counted as bad, so a notice frame asks for a repair (a Gap). A
session that gets only KIS's idle PINGPONG while prints are due (its registrations lost at KIS) was never made
anew, and its pings kept the stale-data alert fresh ('prices and strategies are current'): it is judged dead as
a silent one is."""

from __future__ import annotations

import asyncio
import json

from common.enums import SessionState
from common.krx import Phase
from kis.framebuild import NOTICE23_ACCEPT, NOTICE23_FILL, TRADE_FIELDS_EXAMPLE, notice26
from kis.port import BrokerNotice, Gap, NoticeKind, Trade
from kis.realtime import FrameParser
from kis.ws import KisWebSocket, now_kst
from tests.unit.test_kis_ws import FakeKis, aio, rigged


def _ws() -> tuple[KisWebSocket, list]:
    events: list = []

    async def approval() -> str:
        return "x"

    ws = KisWebSocket(url="ws://127.0.0.1:9/", approval=approval, notice_tr="H0STCNI0", hts_id="h", emit=events.append)
    return ws, events


FILL1 = notice26(odno="0000000001", cntg="2", acpt="2", qty="0000000003", price="000071800")
FILL2 = notice26(odno="0000000002", cntg="2", acpt="2", qty="0000000004", price="000071800")


def test_a_notice_frame_whose_count_understates_its_records_delivers_every_fill_and_asks_a_repair() -> None:
    """'0|H0STCNI0|001|<fill 1>^<fill 2>': the count says 1, two whole 26-field notices follow. The second
    (a fill of 4 shares) is neither delivered, nor counted as a bad record, nor repaired by a Gap."""
    ws, _ = _ws()
    events = ws._parse("0|H0STCNI0|001|" + "^".join(FILL1 + FILL2))
    fills = [e for e in events if isinstance(e, BrokerNotice) and e.kind is NoticeKind.FILLED]
    gaps = [e for e in events if isinstance(e, Gap)]
    assert len(fills) == 2 and gaps, (
        f"fills {[(f.broker_order_id, f.fill_qty) for f in fills]}, no Gap, bad {ws.parser.bad_records}"
    )


def test_two_legacy_notices_under_one_count_are_two_notices_not_one_wide_one() -> None:
    """Two legacy (23-field) notices under count 001: read as ONE 26-field notice whose ODER_PRC (slot 25) is the
    second notice's ODER_NO (2891): an acceptance at 2,891 won; the second notice (a fill) lost, no Gap."""
    p = FrameParser()
    out = p.parse("0|H0STCNI0|001|" + "^".join(NOTICE23_ACCEPT + NOTICE23_FILL))
    assert out[0].order_price != 2891, "order price taken from the next record's order number"
    assert len(out) == 2 and p.bad_records, "the fill notice after it silently lost"


def test_a_trade_frame_whose_count_understates_its_records_delivers_every_print() -> None:
    p = FrameParser()
    out = p.parse("0|H0STCNT0|001|" + "^".join(list(TRADE_FIELDS_EXAMPLE) * 2))
    assert len([e for e in out if isinstance(e, Trade)]) == 2 and p.bad_records, "second print silently dropped"


class PingOnlyKis(FakeKis):
    """Acks every registration, then sends nothing but KIS PINGPONGs (alive but deaf)."""

    async def handler(self, ws) -> None:  # type: ignore[override]
        async def pings() -> None:
            while True:
                await asyncio.sleep(0.2)
                await ws.send(json.dumps({"header": {"tr_id": "PINGPONG", "datetime": "20260108100000"}}))

        t = asyncio.create_task(pings())
        try:
            await super().handler(ws)
        finally:
            t.cancel()


@aio
async def test_a_stream_that_sends_only_pingpong_while_prints_are_due_is_made_anew() -> None:
    """Prints are due (continuous session, a price registration wanted) and the socket sends only KIS PINGPONGs (more
    often than the silence timeout): the session is deaf and made anew after deaf_after_s, and each renewal that
    brings no data either doubles the wait (a stream of seldom-traded codes is as quiet: a connect/close every few
    minutes all day can get the app key blocked)."""
    kis = PingOnlyKis()
    async with rigged(kis, silence_timeout_s=0.5, deaf_after_s=0.3) as rig:
        rig.ws.phase = lambda: Phase.CONTINUOUS
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe("H0STCNT0", "005930")).ok
        await rig.until(lambda: rig.ws.sessions >= 3, timeout=5.0)
        assert rig.ws._deaf_after >= 1.2  # 0.3, then 0.6, then 1.2: spaced out while nothing but pings comes
        assert rig.ws.pings_answered > 0


@aio
async def test_a_silent_stream_in_the_same_setting_is_made_anew() -> None:
    """Passes: the same rig without PINGPONGs is reconnected (what the deaf one should get too)."""
    kis = FakeKis()
    async with rigged(kis, silence_timeout_s=0.5) as rig:
        rig.ws.phase = lambda: Phase.CONTINUOUS
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe("H0STCNT0", "005930")).ok
        await rig.until(lambda: rig.ws.sessions >= 2, timeout=3.0)


@aio
async def test_pings_do_not_make_real_time_data_fresh() -> None:
    """The stale-data alert reads the age of the last message: KIS's PINGPONG is none (it flapped to a false
    'prices and strategies are current' at every ping)."""
    kis = PingOnlyKis()
    async with rigged(kis, silence_timeout_s=5.0, deaf_after_s=100.0) as rig:
        rig.ws.phase = lambda: Phase.CONTINUOUS
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe("H0STCNT0", "005930")).ok
        pings = rig.ws.pings_answered
        await rig.until(lambda: rig.ws.pings_answered >= pings + 4, timeout=5.0)
        assert (now_kst() - rig.ws._last_rx).total_seconds() >= 0.5 and rig.ws.sessions == 1


@aio
async def test_a_deaf_session_is_made_anew_though_a_refused_registration_is_retried_every_minute() -> None:
    """The refusal of each retry of a registration KIS refused (MAX SUBSCRIBE OVER) is a control message, as a
    PINGPONG is: it says nothing of prints flowing, and it kept a deaf session alive all day (review)."""
    kis = PingOnlyKis(cap=2)  # the notice slot + 1 code; the 2nd code is refused MAX SUBSCRIBE OVER
    async with rigged(kis, silence_timeout_s=0.5, deaf_after_s=0.3, refused_retry_s=0.1) as rig:
        rig.ws.phase = lambda: Phase.CONTINUOUS
        await rig.ws.subscribe("H0STCNT0", "005930")
        await rig.ws.subscribe("H0STCNT0", "000660")
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await rig.until(lambda: rig.ws.sessions >= 2, timeout=4.0)
