"""The websocket session against a small in-test KIS-like server on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import websockets

from common.enums import SessionProblem, SessionState
from kis.session_why import session_why
from kis.crypto import NoticeCipher
from kis.framebuild import TRADE_FIELDS_EXAMPLE, frame, notice26
from kis.port import BrokerNotice, Gap, SessionChange, Trade
from kis.ws import KisWebSocket, WsConfig, after_session, backoff_delay

KEY = "abcdefghijklmnopabcdefghijklmnop"
IV = "0123456789abcdef"
HTS = "myhts"


def aio(fn):
    @functools.wraps(fn)
    def run(*a, **k):
        return asyncio.run(asyncio.wait_for(fn(*a, **k), 20))

    return run


class FakeKis:
    def __init__(self, cap: int = 41) -> None:
        self.cap = cap
        self.conns: list[websockets.ServerConnection] = []
        self.registered: list[list[tuple[str, str]]] = []  # per connection
        self.echoes: list[str] = []
        self.refuse = 0  # next N sessions get OPSP8996
        self.approvals = 0
        self.bad_approvals: set[str] = set()  # answered OPSP0011
        self.hts_ids: set[str] | None = None  # notice tr_keys accepted (None: any); others get OPSP0017

    async def handler(self, ws: websockets.ServerConnection) -> None:
        self.conns.append(ws)
        regs: list[tuple[str, str]] = []
        self.registered.append(regs)
        refuse = self.refuse > 0
        if refuse:
            self.refuse -= 1
        async for msg in ws:
            m = json.loads(msg)
            if m["header"].get("tr_id") == "PINGPONG":
                self.echoes.append(msg)
                continue
            tr_id, tr_key = m["body"]["input"]["tr_id"], m["body"]["input"]["tr_key"]
            if m["header"]["approval_key"] in self.bad_approvals:
                await ws.send(
                    json.dumps(
                        {
                            "header": {"tr_id": tr_id, "tr_key": tr_key},
                            "body": {"rt_cd": "1", "msg_cd": "OPSP0011", "msg1": "invalid approval : x"},
                        }
                    )
                )
                continue
            if refuse:
                await ws.send(
                    json.dumps(
                        {
                            "header": {"tr_id": tr_id, "tr_key": tr_key},
                            "body": {"rt_cd": "9", "msg_cd": "OPSP8996", "msg1": "ALREADY IN USE appkey"},
                        }
                    )
                )
                ws.transport.abort()
                return
            key = (tr_id, tr_key)
            if tr_id.startswith("H0STCNI") and self.hts_ids is not None and tr_key not in self.hts_ids:
                # as KIS: header tr_id "(null)", rt_cd 9 (API.md §5.3)
                await ws.send(
                    json.dumps(
                        {
                            "header": {"tr_id": "(null)", "tr_key": tr_key, "encrypt": "N"},
                            "body": {"rt_cd": "9", "msg_cd": "OPSP0017", "msg1": "ERROR : htsid가잘못되었습니다"},
                        }
                    )
                )
                continue
            if m["header"]["tr_type"] == "2":
                regs.remove(key)
                body = {"rt_cd": "0", "msg_cd": "OPSP0001", "msg1": "UNSUBSCRIBE SUCCESS"}
            elif key in regs:
                body = {"rt_cd": "1", "msg_cd": "OPSP0002", "msg1": "ALREADY IN SUBSCRIBE"}
            elif len(regs) >= self.cap:
                body = {"rt_cd": "1", "msg_cd": "OPSP0008", "msg1": "MAX SUBSCRIBE OVER"}
            else:
                regs.append(key)
                body = {
                    "rt_cd": "0",
                    "msg_cd": "OPSP0000",
                    "msg1": "SUBSCRIBE SUCCESS",
                    "output": {"iv": IV, "key": KEY},
                }
            enc = "Y" if tr_id.startswith("H0STCNI") else "N"
            await ws.send(json.dumps({"header": {"tr_id": tr_id, "tr_key": tr_key, "encrypt": enc}, "body": body}))


class Rig:
    def __init__(self, kis: FakeKis, url: str, **cfg) -> None:
        self.events: list = []
        self.kis = kis

        async def approval() -> str:
            kis.approvals += 1
            return f"approval-{kis.approvals}"

        base = dict(
            backoff_base_s=0.05,
            backoff_max_s=0.2,
            in_use_backoff_s=0.1,
            ack_timeout_s=2.0,
            batch_pace_s=0.01,
            batch_size=2,
            ping_interval_s=None,
        )
        base.update(cfg)
        self.ws = KisWebSocket(
            url=url,
            approval=approval,
            notice_tr="H0STCNI0",
            hts_id=HTS,
            emit=self.events.append,
            config=WsConfig(**base),
        )

    async def until(self, pred, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(loop(), timeout)


async def serve(kis: FakeKis):
    server = await websockets.serve(kis.handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/tryitout"


@asynccontextmanager
async def rigged(kis: FakeKis, **cfg) -> AsyncIterator[Rig]:
    """The client connected to a served FakeKis; both closed at the end, whatever the test did."""
    server, url = await serve(kis)
    rig = Rig(kis, url, **cfg)
    try:
        yield rig
    finally:
        await rig.ws.close()
        server.close()
        await server.wait_closed()


def test_backoff_is_bounded_and_jittered() -> None:
    ds = [backoff_delay(a, 1.0, 60.0) for a in range(12)]
    assert all(0.5 <= d for d in ds) and all(d <= 60.0 for d in ds)
    assert ds[-1] >= 30.0


def test_drop_after_ready_retries_at_once_but_a_kick_loop_backs_off() -> None:
    cfg = WsConfig(stable_after_s=2.0, quick_retries=3)
    assert after_session(5, 0, None, cfg) == (5, 0)  # never READY: the back-off keeps growing
    assert after_session(5, 2, 60.0, cfg) == (0, 0)  # a long session: a fresh incident
    attempt, short = 4, 0
    seen = []
    for _ in range(6):  # sessions that die 0.5 s after READY, again and again
        attempt, short = after_session(attempt, short, 0.5, cfg)
        seen.append(attempt)
        attempt += 1  # as the watchdog does after computing the delay
    assert seen == [0, 0, 0, 1, 2, 3]  # the 4th short session in a row starts backing off


@aio
async def test_notice_slot_first_data_and_ping() -> None:
    kis = FakeKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert kis.registered[0][0] == ("H0STCNI0", HTS)
        r = await rig.ws.subscribe("H0STCNT0", "005930")
        assert r.ok and r.code == "OPSP0000"
        again = await rig.ws.subscribe("H0STCNT0", "005930")  # shared: no second registration
        assert again.ok and kis.registered[0].count(("H0STCNT0", "005930")) == 1
        srv = kis.conns[0]
        await srv.send(frame("H0STCNT0", [TRADE_FIELDS_EXAMPLE, TRADE_FIELDS_EXAMPLE]))
        enc = NoticeCipher(KEY, IV).encrypt("^".join(notice26()))
        await srv.send(f"1|H0STCNI0|001|{enc}")
        ping = '{"header":{"tr_id":"PINGPONG","datetime":"20240101093000"}}'
        await srv.send(ping)
        # invalid UTF-8 inside a text frame must not kill the session
        await srv.send(b"0|H0STCNT0|001|\xff\xfe^" + "^".join(TRADE_FIELDS_EXAMPLE[1:]).encode(), text=True)
        await rig.until(lambda: sum(isinstance(e, Trade) for e in rig.events) >= 3 and kis.echoes)
        assert any(isinstance(e, BrokerNotice) for e in rig.events)
        assert kis.echoes == [ping]
        assert rig.ws.state == SessionState.READY and rig.ws.sessions == 1
        # unsubscribe: ref-counted
        assert (await rig.ws.unsubscribe("H0STCNT0", "005930")).ok
        assert ("H0STCNT0", "005930") in kis.registered[0]
        u = await rig.ws.unsubscribe("H0STCNT0", "005930")
        assert u.ok and u.code == "OPSP0001" and ("H0STCNT0", "005930") not in kis.registered[0]
        assert not (await rig.ws.unsubscribe("H0STCNI0", HTS)).ok  # the notice slot is reserved


@aio
async def test_cap_reported_locally_and_by_server() -> None:
    kis = FakeKis(cap=3)
    async with rigged(kis, max_registrations=4) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe("H0STCNT0", "000001")).ok
        assert (await rig.ws.subscribe("H0STCNT0", "000002")).ok
        over = await rig.ws.subscribe("H0STCNT0", "000003")  # server cap 3 incl. notice slot
        assert not over.ok and over.code == "OPSP0008"
        assert ("H0STCNT0", "000003") not in rig.ws.registrations
        assert (await rig.ws.subscribe("H0STASP0", "000004")).code == "OPSP0008"
        kis.cap = 10
        assert (await rig.ws.subscribe("H0STASP0", "000004")).ok
        local = await rig.ws.subscribe("H0STASP0", "000005")  # our own cap of 4
        assert not local.ok and local.code == "LIMIT"


@aio
async def test_abrupt_drop_restores_registrations_and_emits_gap() -> None:
    kis = FakeKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        codes = ["005930", "000660", "035420", "051910", "068270"]
        for c in codes:
            assert (await rig.ws.subscribe("H0STCNT0", c)).ok
        kis.conns[0].transport.abort()  # no close frame
        await rig.until(lambda: any(isinstance(e, Gap) for e in rig.events) and rig.ws.state == SessionState.READY)
        second = kis.registered[1]
        assert second[0] == ("H0STCNI0", HTS)  # notice slot first again
        assert sorted(second[1:]) == sorted(("H0STCNT0", c) for c in codes)
        assert len(second) == len(set(second))  # no duplicate registration
        assert kis.approvals == 1  # the approval key is reused (valid 24 h)
        states = [e.state for e in rig.events if isinstance(e, SessionChange)]
        assert states[:3] == [SessionState.CONNECTING, SessionState.SYNCING, SessionState.READY]
        assert SessionState.DEGRADED in states[3:]
        assert states[-1] == SessionState.READY
        gap = next(e for e in rig.events if isinstance(e, Gap))
        assert gap.since <= gap.until
        # the new session has its own keys: a notice encrypted with them is decrypted
        enc = NoticeCipher(KEY, IV).encrypt("^".join(notice26()))
        await kis.conns[1].send(f"1|H0STCNI0|001|{enc}")
        await rig.until(lambda: any(isinstance(e, BrokerNotice) for e in rig.events))


@aio
async def test_rejected_approval_key_is_replaced() -> None:
    kis = FakeKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        kis.bad_approvals.add("approval-1")  # e.g. expired after a day
        kis.conns[0].transport.abort()
        await rig.until(lambda: rig.ws.sessions >= 3 and rig.ws.state == SessionState.READY)
        assert kis.approvals == 2 and kis.registered[-1][0] == ("H0STCNI0", HTS)
        reasons = [e.reason for e in rig.events if isinstance(e, SessionChange)]
        assert any("OPSP0011" in r for r in reasons) and not any("approval-1" in r for r in reasons)


@aio
async def test_app_key_in_use_backs_off_then_connects() -> None:
    kis = FakeKis()
    kis.refuse = 2
    async with rigged(kis) as rig:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert loop.time() - t0 >= 2 * 0.1 * 0.99  # in_use back-off honoured twice
        assert len(kis.conns) == 3 and rig.ws.sessions == 3
        reasons = [
            e.reason for e in rig.events if isinstance(e, SessionChange) and e.state == SessionState.DISCONNECTED
        ]
        assert any("OPSP8996" in r for r in reasons)


@aio
async def test_silence_triggers_reconnect() -> None:
    kis = FakeKis()
    async with rigged(kis, silence_timeout_s=0.3) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await rig.until(lambda: rig.ws.sessions >= 2, timeout=5)
        assert await rig.ws.wait_state(SessionState.READY, 5)


@aio
async def test_why_not_ready_hts_id_refused_then_fixed() -> None:
    kis = FakeKis()
    kis.hts_ids = {"someone-else"}
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.DEGRADED, 5)
        assert rig.ws.problem is SessionProblem.HTS_ID_REFUSED and "OPSP0017" in rig.ws.problem_detail
        why = session_why(rig.ws.state, rig.ws.problem, rig.ws.problem_detail)
        assert "HTS id" in why and "KTRADER_KIS_HTS_ID" in why and HTS not in why  # the id itself stays off screens


@aio
async def test_why_not_ready_key_in_use() -> None:
    kis = FakeKis()
    kis.refuse = 1000
    async with rigged(kis, in_use_backoff_s=0.05) as rig:
        rig.ws.start()
        await rig.until(lambda: rig.ws.problem is SessionProblem.KEY_IN_USE)
        assert rig.ws.state is not SessionState.READY
        assert "in use elsewhere (OPSP8996)" in session_why(rig.ws.state, rig.ws.problem, rig.ws.problem_detail)
        kis.refuse = 0
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert rig.ws.problem is SessionProblem.NONE


@aio
async def test_why_not_ready_port_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rig = Rig(FakeKis(), f"ws://127.0.0.1:{port}/tryitout", backoff_base_s=0.05)
    rig.ws.start()
    try:
        await rig.until(lambda: rig.ws.problem is SessionProblem.WS_UNREACHABLE)
        why = session_why(rig.ws.state, rig.ws.problem, rig.ws.problem_detail)
        assert f"127.0.0.1:{port}: connection refused" in why and "firewall" in why
    finally:
        await rig.ws.close()


@aio
async def test_a_field_that_does_not_read_drops_its_record_never_the_session() -> None:
    """Issue 21: any non-numeric field in a frame used to kill the KIS session (a reconnect and a
    window of denied orders each time). Now the record is dropped and counted; its frame's good
    records still arrive; a notice that does not read asks for a repair (Gap)."""
    kis = FakeKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe("H0STCNT0", "005930")).ok
        srv = kis.conns[0]
        bad_price = list(TRADE_FIELDS_EXAMPLE)
        bad_price[2] = "7l900"  # a letter where the price is
        bad_volume = list(TRADE_FIELDS_EXAMPLE)
        bad_volume[13] = "1e400"  # reads as a float, overflows an int
        await srv.send(frame("H0STCNT0", [bad_price]))
        await srv.send(frame("H0STCNT0", [bad_volume, TRADE_FIELDS_EXAMPLE]))  # one bad, one good
        enc = NoticeCipher(KEY, IV).encrypt("^".join(notice26(qty="ten")))
        await srv.send(f"1|H0STCNI0|001|{enc}")
        await srv.send(frame("H0STCNT0", [TRADE_FIELDS_EXAMPLE]))
        await rig.until(lambda: sum(isinstance(e, Trade) for e in rig.events) >= 2)
        await rig.until(lambda: any(isinstance(e, Gap) and "notice" in e.reason for e in rig.events))
        assert rig.ws.state == SessionState.READY and rig.ws.sessions == 1  # the session lived through all of it
        assert rig.ws.parser.bad_records == {"H0STCNT0": 2, "H0STCNI0": 1}
        assert not any(isinstance(e, BrokerNotice) for e in rig.events)
        assert rig.ws.parser.errors == 0  # no frame was unreadable as a whole


def test_key_in_use_pause_starts_short_and_doubles() -> None:
    """Issue 21: an OPSP8996 on reconnect kept every order waiting 15.3 s (a fixed 15 s pause). KIS
    wants no tight loop, not a long first wait: the pause starts at 1.5 s and doubles while refused."""
    from kis.ws import in_use_delay

    cfg = WsConfig()
    assert in_use_delay(0, cfg) == 1.5
    for n in range(12):
        d = in_use_delay(n, cfg)
        assert 1.5 <= d <= min(60.0, 1.5 * 2**n)
    assert min(in_use_delay(9, cfg) for _ in range(20)) >= 30.0  # a key KIS keeps locked is not hammered


async def test_a_failing_approval_call_backs_off_instead_of_a_request_a_second() -> None:
    """The approval-key REST call failing (KIS unreachable overnight) was retried under a flat 1 s cap:
    ~3,600 requests and warnings an hour. The first retries stay quick (KIS may be up: a rate limit, an
    HTTP 500), then the cap doubles up to the usual maximum."""
    from kis.port import BrokerTemporary
    from kis.ws import approval_retry_delay

    cfg = WsConfig()
    assert [approval_retry_delay(n, cfg) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def approval() -> str:
        calls.append(loop.time())
        raise BrokerTemporary("approval: connection refused", code="TRANSPORT")

    fast = WsConfig(backoff_base_s=0.01, backoff_max_s=0.32, rest_error_backoff_max_s=0.01, ping_interval_s=None)
    ws = KisWebSocket(
        url="ws://127.0.0.1:9/x", approval=approval, notice_tr="H0STCNI0", hts_id=HTS, emit=lambda e: None, config=fast
    )
    ws.start()
    try:

        async def seven() -> None:
            while len(calls) < 7:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(seven(), 10)
    finally:
        await ws.close()
    # caps 0.01, 0.02, 0.04, 0.08, 0.16, 0.32 between the seven calls (each pause at least half its cap);
    # under the old flat cap the seven calls took about 0.07 s
    assert calls[6] - calls[0] >= 0.3


@aio
async def test_a_registration_refused_on_reconnect_stays_wanted_and_is_tried_again() -> None:
    """A re-registration KIS refuses after a reconnect (e.g. OPSP0008 while it still counts the old
    session's registrations) stays wanted, shows as refused, and is asked for again in the same session
    (and by the next one); it used to be dropped from the ledger while the gateway's subscriptions still
    counted it: that code's data ended silently."""
    kis = FakeKis()
    async with rigged(kis, refused_retry_s=0.05) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        codes = ["005930", "000660", "035420"]
        for c in codes:
            assert (await rig.ws.subscribe("H0STCNT0", c)).ok
        kis.cap = 3  # the notice slot and two more: one re-registration is refused
        kis.conns[0].transport.abort()
        await rig.until(lambda: len(kis.registered) == 2 and len(rig.ws.refused) == 1)
        assert set(rig.ws.registrations) == {("H0STCNI0", HTS), *(("H0STCNT0", c) for c in codes)}  # still wanted
        kis.cap = 41  # KIS let go of the old session's keys
        await rig.until(lambda: not rig.ws.refused and len(kis.registered[1]) == 4)  # same session
        assert sorted(kis.registered[1][1:]) == sorted(("H0STCNT0", c) for c in codes)
        assert len(kis.registered) == 2
