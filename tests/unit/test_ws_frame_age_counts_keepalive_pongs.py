"""The websocket's last received frame of any kind, as the bar clock reads it (`KisWebSocket.frame_age_s`, the
broker's `stream_frame_age_s`): a quiet stream with its socket up still receives the pongs to the keepalive ping,
so its age stays under the ping interval though no message came; a closed socket receives nothing, so it grows."""

from __future__ import annotations

import asyncio

import pytest

from common.clock import now_kst
from common.enums import SessionState
from common.krx import Phase
from kis import ws as ws_module
from tests.unit.test_kis_ws import FakeKis, aio, rigged


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


def _at(monkeypatch: pytest.MonkeyPatch, phase: Phase) -> None:
    monkeypatch.setattr(ws_module, "phase_at", lambda when: phase)


@aio
async def test_a_quiet_stream_whose_pongs_come_back_is_not_reconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    """An evening with only the notice feed: no message for longer than the silence timeout, the socket up and its
    keepalive pongs coming back. Counting messages only, it reconnected each timeout -- every 150 s on a real account
    if KIS's idle PINGPONG (UNCONFIRMED, ~110 s) comes later, a connect/close loop that can lock the app key."""
    _at(monkeypatch, Phase.POST_CLOSE)
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=0.6) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await rig.ws.subscribe("H0STCNT0", "005930")
        await asyncio.sleep(2.0)  # over three silence timeouts, no message: only pongs
        assert rig.ws.sessions == 1 and rig.ws.state is SessionState.READY


@aio
async def test_a_silent_price_stream_in_the_session_is_renewed_whatever_its_pongs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the continuous session with prices wanted, a stream that answers pings but sends nothing is dead (a
    session KIS stopped feeding): a new session, as before -- stops and strategies must not sit on old prices."""
    _at(monkeypatch, Phase.CONTINUOUS)
    kis = FakeKis()
    async with rigged(kis, ping_interval_s=0.2, silence_timeout_s=0.6) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await rig.ws.subscribe("H0STCNT0", "005930")
        await rig.until(lambda: rig.ws.sessions >= 2, timeout=5)
