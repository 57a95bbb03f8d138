"""The websocket's last received frame of any kind, as the bar clock reads it (`KisWebSocket.frame_age_s`, the
broker's `stream_frame_age_s`): a quiet stream with its socket up still receives the pongs to the keepalive ping,
so its age stays under the ping interval though no message came; a closed socket receives nothing, so it grows."""

from __future__ import annotations

import asyncio

import pytest

from common.clock import now_kst
from common.enums import SessionState
from common.krx import Phase
from tests.unit.test_kis_ws import FakeKis, Rig, aio, rigged


@aio
async def test_a_quiet_socket_is_live_to_its_last_keepalive_pong() -> None:
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=30.0) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await asyncio.sleep(1.0)  # no message from the server: only pongs to the client's pings
        age = rig.ws.frame_age_s()
        assert age is not None and age < 0.45
        # the stale-data alert's message age (BrokerHealth.ws_last_message_age_s) is not moved by pongs
        assert (now_kst() - rig.ws._last_rx).total_seconds() >= 0.9


@aio
async def test_a_dropped_socket_ages_from_its_last_frame() -> None:
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=30.0, backoff_base_s=5.0, backoff_max_s=5.0) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await asyncio.sleep(0.3)
        kis.conns[0].transport.abort()  # dropped: the client reconnects only seconds later
        await rig.until(lambda: rig.ws.state is not SessionState.READY)
        await asyncio.sleep(1.0)
        age = rig.ws.frame_age_s()
        assert age is not None and age >= 1.0  # nothing received since the drop: bars wait


def _at(rig: Rig, phase: Phase | list[Phase]) -> None:
    """The market's phase as the gateway's clock says it (use_phase): a fixed one, or one per question."""
    phases = phase if isinstance(phase, list) else None
    rig.ws.phase = (lambda: phases.pop(0) if len(phases) > 1 else phases[0]) if phases else (lambda: phase)


async def _up(rig: Rig, phase: Phase, *, prices: bool) -> None:
    """The session ready at `phase`, with 005930's prints wanted (`prices`) or the notice feed alone."""
    _at(rig, phase)
    rig.ws.start()
    assert await rig.ws.wait_state(SessionState.READY, 5)
    if prices:
        await rig.ws.subscribe("H0STCNT0", "005930")


@aio
async def test_a_quiet_stream_whose_pongs_come_back_is_not_reconnected() -> None:
    """An evening with only the notice feed: no message for longer than the silence timeout, the socket up and its
    keepalive pongs coming back. Counting messages only, it reconnected each timeout -- every 150 s on a real account
    if KIS's idle PINGPONG (UNCONFIRMED, ~110 s) comes later, a connect/close loop that can lock the app key."""
    kis = FakeKis()
    # (a timeout well over the ping interval: a stall of the loaded machine must not pass for a lost pong)
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=1.5) as rig:
        await _up(rig, Phase.POST_CLOSE, prices=True)
        await asyncio.sleep(4.6)  # over three silence timeouts, no message: only pongs
        assert rig.ws.sessions == 1 and rig.ws.state is SessionState.READY


@aio
async def test_a_silent_price_stream_in_the_session_is_renewed_whatever_its_pongs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the continuous session with prices wanted, a stream that answers pings but sends nothing is dead (a
    session KIS stopped feeding): a new session, as before -- stops and strategies must not sit on old prices."""
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=0.6) as rig:
        await _up(rig, Phase.CONTINUOUS, prices=True)
        await rig.until(lambda: rig.ws.sessions >= 2, timeout=5)


@aio
async def test_the_notice_feed_alone_is_never_due_prints() -> None:
    """In the continuous session with only the notice feed (no price wanted): quiet is normal, its pongs keep it."""
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=1.5) as rig:  # (see above)
        await _up(rig, Phase.CONTINUOUS, prices=False)
        await asyncio.sleep(4.6)
        assert rig.ws.sessions == 1


@aio
async def test_silence_before_the_open_counts_from_the_open() -> None:
    """The last print at 08:58:40, the timeout fires at 09:01:10: 70 s of the continuous session, not 150 -- the
    session is not renewed at the open, its busiest moment; once the continuous session itself was silent a whole
    timeout, it is."""
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=0.6) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await rig.ws.subscribe("H0STCNT0", "005930")
        _at(rig, [Phase.OPENING_AUCTION, Phase.CONTINUOUS])  # (auction at the first silence, continuous after)
        await asyncio.sleep(1.5)  # the first timeout in the auction, the second the first of the session
        assert rig.ws.sessions == 1
        await rig.until(lambda: rig.ws.sessions >= 2, timeout=5)  # a whole timeout of continuous silence
