"""How the KIS real-time session recovers when KIS answers badly: notices that do not decrypt, a
notice slot without its AES key or refused at a reconnect, acks that come late, an approval key KIS
stops accepting mid-session. Against a scripted KIS-like server on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

from common.enums import SessionProblem, SessionState
from kis.crypto import NoticeCipher
from kis.framebuild import notice26
from kis.port import BrokerNotice, Gap, SessionChange
from tests.unit.test_kis_ws import HTS, IV, KEY, FakeKis, aio, rigged

Key = tuple[str, str]
NOTICE: Key = ("H0STCNI0", HTS)
Body = dict[str, Any]

SUBSCRIBED: Body = {"rt_cd": "0", "msg_cd": "OPSP0000", "msg1": "SUBSCRIBE SUCCESS", "output": {"iv": IV, "key": KEY}}
ALREADY: Body = {"rt_cd": "1", "msg_cd": "OPSP0002", "msg1": "ALREADY IN SUBSCRIBE"}  # no key/iv
CAP: Body = {"rt_cd": "1", "msg_cd": "OPSP0008", "msg1": "MAX SUBSCRIBE OVER"}
RELEASED: Body = {"rt_cd": "0", "msg_cd": "OPSP0001", "msg1": "UNSUBSCRIBE SUCCESS"}


def fill_notice(key: str = KEY, iv: str = IV) -> str:
    return f"1|H0STCNI0|001|{NoticeCipher(key, iv).encrypt('^'.join(notice26(cntg='2', acpt='2')))}"


class ScriptedKis(FakeKis):
    """Answers like KIS (API.md §5.3) unless a test's `answer` says otherwise; `delay` holds a reply
    back; `carried` keys are still registered when a later connection opens (KIS counting the old
    session's after a fast reconnect). `requests[conn]` lists (tr_type, key) as received."""

    def __init__(self, cap: int = 41) -> None:
        super().__init__(cap)
        self.carried: set[Key] = set()
        self.requests: list[list[tuple[str, Key]]] = []
        self._late: set[asyncio.Task[None]] = set()

    def answer(self, conn: int, tr_type: str, key: Key) -> Body | None:
        return None

    def delay(self, conn: int, tr_type: str, key: Key, nth: int) -> float:
        return 0.0

    def kis_answer(self, approval: str, tr_type: str, key: Key, regs: list[Key]) -> Body:
        if approval in self.bad_approvals:  # as KIS: the key is echoed in msg1
            return {"rt_cd": "1", "msg_cd": "OPSP0011", "msg1": f"invalid approval : {approval}"}
        if tr_type == "2":
            if key not in regs:
                return {"rt_cd": "1", "msg_cd": "OPSP0003", "msg1": "UNSUBSCRIBE ERROR(not found!)"}
            regs.remove(key)
            return RELEASED
        if key in regs:
            return ALREADY
        if len(regs) >= self.cap:
            return CAP
        regs.append(key)
        return SUBSCRIBED

    async def handler(self, ws: websockets.ServerConnection) -> None:
        conn = len(self.conns)
        self.conns.append(ws)
        regs: list[Key] = sorted(self.carried) if conn else []
        self.registered.append(regs)
        reqs: list[tuple[str, Key]] = []
        self.requests.append(reqs)
        async for msg in ws:
            m = json.loads(msg)
            if m["header"].get("tr_id") == "PINGPONG":
                continue
            tr_type = m["header"]["tr_type"]
            key = (m["body"]["input"]["tr_id"], m["body"]["input"]["tr_key"])
            reqs.append((tr_type, key))
            body = self.answer(conn, tr_type, key) or self.kis_answer(m["header"]["approval_key"], tr_type, key, regs)
            enc = "Y" if key[0].startswith("H0STCNI") else "N"
            reply = json.dumps({"header": {"tr_id": key[0], "tr_key": key[1], "encrypt": enc}, "body": body})
            wait = self.delay(conn, tr_type, key, reqs.count((tr_type, key)))
            if wait > 0:
                task = asyncio.get_running_loop().create_task(self._send_later(ws, reply, wait))
                self._late.add(task)
                task.add_done_callback(self._late.discard)
            else:
                await ws.send(reply)

    @staticmethod
    async def _send_later(ws: websockets.ServerConnection, reply: str, wait: float) -> None:
        await asyncio.sleep(wait)
        try:
            await ws.send(reply)
        except ConnectionClosed:
            pass


def gaps(events: list[object]) -> list[Gap]:
    return [e for e in events if isinstance(e, Gap)]


@aio
async def test_a_notice_frame_that_cannot_be_decrypted_asks_for_a_repair() -> None:
    """A fill notice that does not decrypt as a whole (another key/iv, cut short in transit) used to be
    dropped with a counter only: the fill waited for the next periodic reconcile. Now a Gap asks the
    gateway to repair at once, and the session lives on."""
    kis = ScriptedKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        srv = kis.conns[0]
        await srv.send(fill_notice("Z" * 32, "Y" * 16))  # encrypted with a key this session never got
        await srv.send(fill_notice()[:-8])  # cut short: not a whole number of AES blocks
        await rig.until(lambda: rig.ws.parser.errors >= 2)
        assert not any(isinstance(e, BrokerNotice) for e in rig.events)
        found = gaps(rig.events)
        assert len(found) == 2, "a notice frame that did not decrypt raised no Gap"
        assert all("notice" in g.reason for g in found)
        assert rig.ws.state is SessionState.READY and rig.ws.sessions == 1


@aio
async def test_a_notice_slot_already_registered_at_reconnect_is_asked_again_for_its_key() -> None:
    """After a fast reconnect KIS may answer the notice slot with OPSP0002 ALREADY IN SUBSCRIBE and no
    AES key/iv: the session went READY and every fill notice of it was lost. Now the slot is released
    and asked for again, and the session is READY with the key."""
    kis = ScriptedKis()
    kis.carried = {NOTICE}
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        kis.conns[0].transport.abort()
        await rig.until(lambda: rig.ws.sessions == 2 and rig.ws.state is SessionState.READY)
        assert "H0STCNI0" in rig.ws.parser.ciphers, "READY with no key: every notice of the session is lost"
        assert kis.requests[1][:3] == [("1", NOTICE), ("2", NOTICE), ("1", NOTICE)]
        await kis.conns[1].send(fill_notice())
        await rig.until(lambda: any(isinstance(e, BrokerNotice) for e in rig.events))


class KeylessNotice(ScriptedKis):
    """From the second connection on, the notice slot comes without key/iv while `keyless`."""

    keyless = True

    def answer(self, conn: int, tr_type: str, key: Key) -> Body | None:
        if conn == 0 or key != NOTICE or not self.keyless:
            return None
        return RELEASED if tr_type == "2" else ALREADY


@aio
async def test_a_notice_slot_without_a_key_keeps_the_session_degraded_until_the_key_comes() -> None:
    """When asking again still gives no key, the session is not READY (orders wait: their fills would
    go unseen), says why, asks for the repair of any notice it cannot read, and becomes READY once KIS
    hands out the key, with a Gap for the time without notices."""
    kis = KeylessNotice()
    async with rigged(kis, refused_retry_s=0.1) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        kis.conns[0].transport.abort()
        await rig.until(
            lambda: (
                rig.ws.sessions == 2
                and rig.ws.state in (SessionState.READY, SessionState.DEGRADED)
                and rig.ws.problem is not SessionProblem.DROPPED
            )
        )
        assert rig.ws.state is SessionState.DEGRADED, "READY without the notice key"
        assert rig.ws.problem is SessionProblem.NOTICE_REFUSED and "AES key" in rig.ws.problem_detail
        assert NOTICE in rig.ws.refused
        before = len(gaps(rig.events))
        await kis.conns[1].send(fill_notice())
        await rig.until(lambda: rig.ws.parser.errors >= 1)
        assert len(gaps(rig.events)) == before + 1  # the unreadable notice asks for a repair
        kis.keyless = False
        await rig.until(lambda: rig.ws.state is SessionState.READY)
        assert rig.ws.problem is SessionProblem.NONE and "H0STCNI0" in rig.ws.parser.ciphers
        assert rig.ws.sessions == 2 and not rig.ws.refused
        assert "notice" in gaps(rig.events)[-1].reason  # the notice-less time is repaired
        await kis.conns[1].send(fill_notice())
        await rig.until(lambda: any(isinstance(e, BrokerNotice) for e in rig.events))


class NoticeRefusedOnce(ScriptedKis):
    """The second connection's first notice registration is refused (KIS still counting the old
    session's registrations)."""

    def answer(self, conn: int, tr_type: str, key: Key) -> Body | None:
        if conn == 1 and key == NOTICE and self.requests[1].count(("1", NOTICE)) == 1:
            return CAP
        return None


@aio
async def test_a_notice_slot_refused_at_reconnect_is_asked_again_until_the_session_is_ready() -> None:
    """A notice slot refused at a reconnect (OPSP0008) used to leave the session DEGRADED, orders
    denied, until the socket happened to drop: it was never asked for again."""
    kis = NoticeRefusedOnce()
    async with rigged(kis, refused_retry_s=0.05) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe("H0STCNT0", "005930")).ok
        kis.conns[0].transport.abort()
        await rig.until(lambda: rig.ws.sessions == 2 and rig.ws.problem is SessionProblem.NOTICE_REFUSED)
        assert await rig.ws.wait_state(SessionState.READY, 3), "the refused notice slot was never asked again"
        assert kis.requests[1].count(("1", NOTICE)) == 2 and rig.ws.sessions == 2
        assert rig.ws.problem is SessionProblem.NONE and "H0STCNI0" in rig.ws.parser.ciphers
        assert ("H0STCNT0", "005930") in rig.ws.active and not rig.ws.refused
        changes = [e.state for e in rig.events if isinstance(e, SessionChange)]
        assert changes[-2:] == [SessionState.DEGRADED, SessionState.READY]
        last_ready = max(i for i, e in enumerate(rig.events) if isinstance(e, SessionChange))
        assert any(isinstance(e, Gap) for e in rig.events[last_ready:])  # fills while it was missing


@aio
async def test_a_wrong_hts_id_is_not_asked_again() -> None:
    """OPSP0017 (the HTS id is wrong) cannot heal by asking again: only the other refused keys are."""
    kis = FakeKis()
    async with rigged(kis, refused_retry_s=0.05) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        for code in ("000001", "000002"):
            assert (await rig.ws.subscribe("H0STCNT0", code)).ok
        kis.hts_ids, kis.cap = {"someone-else"}, 1  # the second code is refused at the next sync
        kis.conns[0].transport.abort()

        def sent(key: Key) -> int:
            return sum(1 for s, k in rig.ws.sent_registrations if s == 2 and k == key)

        await rig.until(lambda: sent(("H0STCNT0", "000002")) >= 3)  # the retry loop ran twice
        assert rig.ws.problem is SessionProblem.HTS_ID_REFUSED and rig.ws.state is SessionState.DEGRADED
        assert sent(NOTICE) == 1 and NOTICE not in rig.ws.refused


class LateAcks(ScriptedKis):
    """Holds back the first reply for the keys in `delays` (KIS busy)."""

    def __init__(self, delays: dict[Key, float], cap: int = 41) -> None:
        super().__init__(cap)
        self.delays = delays

    def delay(self, conn: int, tr_type: str, key: Key, nth: int) -> float:
        return self.delays.get(key, 0.0) if nth == 1 else 0.0


@aio
async def test_a_late_ack_is_never_taken_as_another_registrations_answer() -> None:
    """A's SUBSCRIBE SUCCESS came after A's wait timed out, while B waited: B was handed it and
    reported registered though KIS refused B (MAX SUBSCRIBE OVER)."""
    a, b = ("H0STCNT0", "00000A"), ("H0STASP0", "00000B")

    class RefusesB(LateAcks):  # A, unanswered in time, is released (NO_ACK): B is refused all the same
        def answer(self, conn: int, tr_type: str, key: Key) -> Body | None:
            return CAP if key == b and tr_type == "1" else None

    # ack timeout 1.0 s; A's ack at 1.4 s, while B (sent at 1.0 s) waits for its own at 1.8 s
    kis = RefusesB({a: 1.4, b: 0.8}, cap=2)
    async with rigged(kis, ack_timeout_s=1.0) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        await rig.ws.subscribe(*a)
        rb = await rig.ws.subscribe(*b)
        assert b not in kis.registered[0]
        assert not rb.ok and rb.code == "OPSP0008", f"B reported {rb.code} though KIS refused it"
        assert b not in rig.ws.active and b not in rig.ws.registrations


@aio
async def test_an_ack_timeout_on_a_live_session_is_reported_not_as_waiting_for_a_reconnect() -> None:
    """A registration whose ack does not come in time was reported QUEUED 'registered when the session
    is back' though the session never went away (nothing would register it). Then it was reported ok
    and asked again, which leaked KIS slots (see test_no_ack_on_subscribe_...). Now the caller is told
    NO_ACK (not ok: the holder polls and asks again) and KIS is asked to let go of it."""
    a = ("H0STCNT0", "00000A")
    kis = LateAcks({a: 0.6})
    async with rigged(kis, ack_timeout_s=0.3, refused_retry_s=0.2) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        ra = await rig.ws.subscribe(*a)
        assert not ra.ok and ra.code == "NO_ACK", f"reported {ra.code} {ra.message!r}"
        assert "released" in ra.message and "QUEUED" not in ra.message
        assert a not in rig.ws.refused and a not in rig.ws.registrations
        await rig.until(lambda: ("2", a) in kis.requests[0] and a not in kis.registered[0])
        assert a not in rig.ws.active and rig.ws.sessions == 1
        assert rig.ws.state is SessionState.READY
        assert (await rig.ws.subscribe(*a)).ok  # asked again by its holder: registered
        assert a in rig.ws.active and a in kis.registered[0]


@aio
async def test_an_approval_key_refused_mid_session_is_renewed_and_the_registration_kept() -> None:
    """OPSP0011 answering a subscribe on a live session was handed to the caller (with the approval
    key KIS echoes in msg1) and the code dropped, while the session kept the dead key: every later
    subscribe failed the same way. Now the session ends, a new approval key is fetched and the code is
    registered on the next session."""
    kis = ScriptedKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        kis.bad_approvals.add("approval-1")  # e.g. aged out while the socket stayed up
        r = await rig.ws.subscribe("H0STCNT0", "005930")
        assert "approval-1" not in r.message
        assert r.ok, f"{r.code} {r.message}: the registration was dropped"
        await rig.until(lambda: rig.ws.sessions == 2 and rig.ws.state is SessionState.READY)
        assert kis.approvals == 2 and rig.ws.problem is SessionProblem.NONE
        assert ("H0STCNT0", "005930") in rig.ws.active and ("H0STCNT0", "005930") in kis.registered[1]
        assert (await rig.ws.subscribe("H0STCNT0", "000660")).ok
        reasons = [e.reason for e in rig.events if isinstance(e, SessionChange)]
        assert any("OPSP0011" in r for r in reasons) and not any("approval-1" in r for r in reasons)


class NoticeRefusedOnceSlowSync(ScriptedKis):
    """The second connection's first notice registration is refused (OPSP0008) and the data keys' acks
    are slow (KIS busy): the sync outlasts refused_retry_s, so the slot is granted while it runs."""

    def answer(self, conn: int, tr_type: str, key: Key) -> Body | None:
        if conn == 1 and key == NOTICE and self.requests[1].count(("1", NOTICE)) == 1:
            return CAP
        return None

    def delay(self, conn: int, tr_type: str, key: Key, nth: int) -> float:
        return 0.5 if conn == 1 and key != NOTICE else 0.0


@aio
async def test_a_notice_slot_granted_while_the_sync_still_runs_makes_the_session_ready() -> None:
    """The retry loop got the refused notice slot while the data keys were still registering (SYNCING,
    so it did not switch to READY) and the sync then ended on the refusal it saw at its start: DEGRADED
    for good with notices working, every order denied SESSION_NOT_READY."""
    kis = NoticeRefusedOnceSlowSync()
    async with rigged(kis, refused_retry_s=0.1, ack_timeout_s=2.0) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        for code in ("000001", "000002", "000003", "000004"):
            assert (await rig.ws.subscribe("H0STCNT0", code)).ok
        kis.conns[0].transport.abort()
        await rig.until(lambda: rig.ws.sessions == 2 and rig.ws.state is SessionState.SYNCING)
        assert await rig.ws.wait_state(SessionState.READY, 5), f"{rig.ws.state} {rig.ws.problem}"
        assert rig.ws.problem is SessionProblem.NONE and "H0STCNI0" in rig.ws.parser.ciphers
        assert kis.requests[1].count(("1", NOTICE)) == 2 and rig.ws.sessions == 2 and not rig.ws.refused
        last_ready = max(i for i, e in enumerate(rig.events) if isinstance(e, SessionChange))
        assert any(isinstance(e, Gap) for e in rig.events[last_ready:])  # the reconnect's gap is repaired


@aio
async def test_no_ack_on_subscribe_is_reported_and_released_so_a_late_success_holds_no_slot() -> None:
    """NO_ACK was reported ok with the key wanted but not active: its holder leaving sent no release,
    KIS's late SUBSCRIBE SUCCESS kept the slot, and the next code got MAX SUBSCRIBE OVER with the ledger
    empty. Now the caller is told no, the key is forgotten and released, and the late ack marks nothing."""
    a, b = ("H0STCNT0", "00000A"), ("H0STCNT0", "00000B")
    kis = LateAcks({a: 0.6}, cap=2)  # the notice slot and one more
    async with rigged(kis, ack_timeout_s=0.3, refused_retry_s=5.0) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        ra = await rig.ws.subscribe(*a)
        assert not ra.ok and ra.code == "NO_ACK" and "released" in ra.message
        assert a not in rig.ws.registrations and a not in rig.ws.refused
        assert (await rig.ws.unsubscribe(*a)).code == "NOT_SUBSCRIBED"  # nothing left for a holder to release
        await asyncio.sleep(0.8)  # KIS's late SUBSCRIBE SUCCESS for A, then its release's answer, arrive
        assert ("2", a) in kis.requests[0] and a not in kis.registered[0]
        assert a not in rig.ws.active and a not in rig.ws.registrations  # the late ack marked nothing
        rb = await rig.ws.subscribe(*b)
        assert rb.ok and rb.code == "OPSP0000", f"B: {rb.code} {rb.message}"
        assert b in rig.ws.active and rig.ws.state is SessionState.READY and rig.ws.sessions == 1


@aio
async def test_no_ack_then_a_refusal_is_reported_to_the_caller_not_kept_for_good() -> None:
    """A NO_ACK then refused (OPSP0008) on every retry stayed 'wanted', never reported: nothing but the
    health page reads `refused`, so the holders waited for prints that never came."""
    a = ("H0STCNT0", "00000A")
    kis = LateAcks({a: 0.6}, cap=1)  # only the notice slot fits: KIS refuses A
    async with rigged(kis, ack_timeout_s=0.3, refused_retry_s=0.2) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        ra = await rig.ws.subscribe(*a)
        assert not ra.ok and ra.code == "NO_ACK"  # the SubscriptionManager tells the holders
        await asyncio.sleep(0.8)  # several retry periods
        assert a not in rig.ws.refused and a not in rig.ws.registrations and a not in rig.ws.active
        assert kis.requests[0].count(("1", a)) == 1  # nothing asks again behind the caller's back


class SlowAtSync(ScriptedKis):
    """On the second connection KIS takes A but its ack comes after the ack timeout (NO_ACK at sync)."""

    def __init__(self, a: Key) -> None:
        super().__init__()
        self.a = a

    def delay(self, conn: int, tr_type: str, key: Key, nth: int) -> float:
        return 0.6 if conn == 1 and key == self.a and tr_type == "1" else 0.0


@aio
async def test_unsubscribe_releases_a_key_unanswered_at_the_sync() -> None:
    """A key without an ack at a reconnect's sync is kept wanted (retried) though KIS may hold it; its
    last holder leaving sent no release (it was not active): the slot stayed taken at KIS."""
    a = ("H0STCNT0", "00000A")
    kis = SlowAtSync(a)
    async with rigged(kis, ack_timeout_s=0.3, refused_retry_s=30.0) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        assert (await rig.ws.subscribe(*a)).ok
        kis.conns[0].transport.abort()
        await rig.until(lambda: rig.ws.sessions == 2 and rig.ws.state is SessionState.READY)
        assert a in rig.ws.refused and a not in rig.ws.active
        await rig.until(lambda: a in kis.registered[1])  # KIS took it all the same
        ru = await rig.ws.unsubscribe(*a)
        assert ru.ok, f"{ru.code} {ru.message}"
        assert ("2", a) in kis.requests[1] and a not in kis.registered[1]
        assert a not in rig.ws.refused and a not in rig.ws.registrations and a not in rig.ws.active


@aio
async def test_a_clean_stop_logs_no_drop_and_no_reconnect(caplog: Any) -> None:
    """close() logged 'the KIS websocket dropped (ConnectionClosedOK: sent 1000 (OK)); reconnecting'."""
    kis = ScriptedKis()
    async with rigged(kis) as rig:
        rig.ws.start()
        assert await rig.ws.wait_state(SessionState.READY, 5)
        caplog.clear()
        caplog.set_level(logging.INFO, logger="kis.ws")
        await rig.ws.close()
        assert rig.ws.state is SessionState.DISCONNECTED
        said = [r.getMessage() for r in caplog.records if r.name == "kis.ws" and r.levelno >= logging.WARNING]
        assert not said, said
        assert rig.ws.problem is not SessionProblem.DROPPED
