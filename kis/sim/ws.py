"""The websocket front end: KIS subscribe/unsubscribe protocol, realtime frames, encrypted notices,
PINGPONG, one session per app key, and websocket fault injection.

Exchange events arrive synchronously; each session has a queue drained by its own writer task, so
a slow client never blocks the exchange (API.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from common.aio import within
from common.clock import KST
from kis.sim.auth import AppKey
from kis.sim.exchange import BookChange, Event, Notice, TradePrint
from kis.sim.twin import Twin
from kis.sim.wire import (
    MAX_REGISTRATIONS,
    NOTICE_FIELDS,
    TR_BOOK,
    TR_NOTICE_PAPER,
    TR_NOTICE_REAL,
    TR_OVERSEAS_NOTICE_PAPER,
    TR_OVERSEAS_NOTICE_REAL,
    TR_PRICE,
    aes_encrypt,
    control,
    data_frame,
    random_key_iv,
)

log = logging.getLogger("kis.sim.ws")
_CNTG_YN = NOTICE_FIELDS.index("CNTG_YN")
_ACPT_YN = NOTICE_FIELDS.index("ACPT_YN")
_RCTF_CLS = NOTICE_FIELDS.index("RCTF_CLS")
_CANCEL_CONFIRMED = ("1", "2", "2")  # (CNTG_YN, ACPT_YN, RCTF_CLS) of a cancel's 확인 notice (API.md §5.8)


def _kind(record: list[str]) -> tuple[str, str, str]:
    return record[_CNTG_YN], record[_ACPT_YN], record[_RCTF_CLS]


QUEUE_LIMIT = 100_000  # frames per session before the session is considered dead


@dataclass(eq=False)
class Session:
    ws: web.WebSocketResponse
    request: web.Request
    key: AppKey | None = None
    regs: set[tuple[str, str]] = field(default_factory=set)
    key_iv: tuple[str, str] = field(default_factory=random_key_iv)
    queue: asyncio.Queue[tuple[str, str, list[str] | None]] = field(default_factory=asyncio.Queue)
    held_notice: str | None = None  # reorder fault
    last_sent: float = field(default_factory=time.monotonic)
    closed: bool = False

    def push(self, tr_id: str, frame: str, record: list[str] | None = None) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.abort()
            return
        self.queue.put_nowait((tr_id, frame, record))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (client sees 1006)."""
        self.closed = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def hangup(self) -> None:
        """Close the TCP connection after flushing what was written, still without a close frame."""
        self.closed = True
        transport = self.request.transport
        if transport is not None:
            transport.close()


class WsHub:
    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self.sessions: set[Session] = set()
        self.by_key: dict[str, Session] = {}
        self.subs: dict[tuple[str, str], set[Session]] = {}
        self.last_print: dict[str, list[str]] = {}  # code -> the last H0STCNT0 record sent (bad-print fault)
        self.garble_next_notice: int | None = None  # fault: the next notice record gets this field garbled
        twin.exchange.add_listener(self.on_event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.handle)
        app.router.add_get("/tryitout", self.handle)
        app.router.add_get("/tryitout/{tail:.*}", self.handle)
        return app

    # ------------------------------------------------------------------ exchange events
    def on_event(self, ev: Event) -> None:
        if isinstance(ev, TradePrint):
            self._fan_out(TR_PRICE, ev.code, ev.record)
        elif isinstance(ev, BookChange):
            self._fan_out(TR_BOOK, ev.code, ev.record)
        elif isinstance(ev, Notice):
            self._notice(ev)

    def _fan_out(self, tr_id: str, code: str, record: list[str]) -> None:
        if tr_id == TR_PRICE:
            self.last_print[code] = record
        sessions = self.subs.get((tr_id, code))
        if not sessions:
            return
        frame = data_frame(tr_id, [record])
        for s in sessions:
            s.push(tr_id, frame, record)

    def _notice(self, ev: Notice) -> None:
        faults = self.twin.faults
        if faults.notices.lose_fills and ev.record[_CNTG_YN] == "2":
            return  # a fill notice that never arrives (the order list still has the fill)
        if faults.cancel_confirm_single and _kind(ev.record) == _CANCEL_CONFIRMED:
            return  # a cancel's 확인 (confirmed) notice is not sent: its 접수 was the only one
        for s in list(self.sessions):
            if s.key is None or ev.account_id not in s.key.account_ids:
                continue
            tr = TR_NOTICE_PAPER if s.key.paper else TR_NOTICE_REAL
            if not any(r[0] == tr for r in s.regs):
                continue
            record = ev.legacy if faults.legacy_notice else ev.record
            if self.garble_next_notice is not None:
                record = list(record)
                record[self.garble_next_notice] = (
                    "x" + record[self.garble_next_notice][1:]
                )  # a field that does not read
            frame = f"1|{tr}|001|{aes_encrypt('^'.join(record), *s.key_iv)}"
            copies = 2 if faults.notices.duplicate else 1
            delay = faults.notices.delay_ms / 1000
            for _ in range(copies):
                if delay > 0:
                    asyncio.get_running_loop().call_later(delay, s.push, tr, frame, None)
                elif faults.notices.reorder:
                    if s.held_notice is None:
                        s.held_notice = frame
                    else:
                        s.push(tr, frame, None)
                        s.push(tr, s.held_notice, None)
                        s.held_notice = None
                else:
                    s.push(tr, frame, None)

    # ------------------------------------------------------------------ admin actions
    def drop_all(self) -> int:
        n = 0
        for s in list(self.sessions):
            s.abort()
            n += 1
        return n

    async def send_invalid_utf8(self) -> int:
        n = 0
        for s in list(self.sessions):
            with contextlib.suppress(Exception):
                await s.ws.send_frame(b"0|H0STCNT0|001|\xff\xfe\xfd", WSMsgType.TEXT)
                n += 1
        return n

    def bad_print(self, code: str, fields: dict[int, str]) -> int:
        """Fault: the code's last print again, with `fields` replaced (a price of -71000, a volume of
        "abc"), to its subscribers only; the exchange's own state is untouched."""
        base = self.last_print.get(code)
        if base is None:
            raise ValueError(f"no print of {code} sent yet")
        record = list(base)
        # a new print (its quantity added to the day's volume), not a re-sent one, unless told otherwise
        record[13] = str(int(base[13]) + int(base[12]))
        for i, v in fields.items():
            record[i] = v
        sessions = self.subs.get((TR_PRICE, code), set())
        frame = data_frame(TR_PRICE, [record])
        for s in sessions:
            s.push(TR_PRICE, frame, None)
        return len(sessions)

    def pingpong_all(self) -> int:
        for s in self.sessions:
            s.push("PINGPONG", _pingpong(self.twin.clock.now()), None)
        return len(self.sessions)

    def flush_held_notices(self) -> None:
        for s in self.sessions:
            if s.held_notice is not None:
                s.push("", s.held_notice, None)
                s.held_notice = None

    # ------------------------------------------------------------------ session
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        s = Session(ws, request)
        self.sessions.add(s)
        writer = asyncio.create_task(self._writer(s))
        try:
            if self.twin.faults.ws_refusing():
                await self._refuse_in_use(s)
                return ws
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(s, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._on_text(s, msg.data.decode("utf-8", "replace"))
                elif msg.type == WSMsgType.ERROR:
                    break
                if s.closed:
                    break
        except Exception:  # a client's bytes must never take the twin down
            log.debug("websocket session error", exc_info=True)
        finally:
            s.closed = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            self._forget(s)
        return ws

    async def _refuse_in_use(self, s: Session) -> None:
        """Fault mode "app key in use": like KIS, the refusal answers the first request (only its
        approval key says who is calling). Reading that request first also matters on the wire:
        closing a socket with unread bytes sends a TCP RST, which can destroy the reply in flight."""
        tr_id = tr_key = ""
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            msg = await s.ws.receive(timeout=5.0)
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                inp = (json.loads(data).get("body") or {}).get("input") or {}
                tr_id, tr_key = str(inp.get("tr_id", "")), str(inp.get("tr_key", ""))
        with contextlib.suppress(Exception):
            await s.ws.send_str(json.dumps(control(tr_id, tr_key, "9", "OPSP8996", "ALREADY IN USE appkey")))
        s.hangup()

    def _forget(self, s: Session) -> None:
        self.sessions.discard(s)
        if s.key is not None and self.by_key.get(s.key.key) is s:
            del self.by_key[s.key.key]
        for reg in s.regs:
            subs = self.subs.get(reg)
            if subs is not None:
                subs.discard(s)
                if not subs:
                    del self.subs[reg]

    async def _writer(self, s: Session) -> None:
        """Frames in queue order; PINGPONG after `pingpong_s` idle seconds and, when configured, every
        `pingpong_every_s` seconds even while frames flow (a ping due is sent before the next frame)."""
        idle_s = self.twin.config.pingpong_s
        every_s = self.twin.config.pingpong_every_s
        next_every = time.monotonic() + every_s if every_s > 0 else math.inf
        batch = self.twin.faults
        try:
            while not s.closed:
                now = time.monotonic()
                due = min(next_every, s.last_sent + idle_s if idle_s > 0 else math.inf)
                if now >= due:
                    if now >= next_every:
                        next_every = now + every_s
                    await s.ws.send_str(_pingpong(self.twin.clock.now()))
                    s.last_sent = time.monotonic()
                    continue
                try:
                    tr_id, frame, record = await within(s.queue.get(), None if due == math.inf else due - now)
                except TimeoutError:
                    continue
                n = batch.batch_records
                if n > 1 and record is not None:
                    # batched records: gather up to n queued records of the same TR into one frame
                    records = [record]
                    rest: list[tuple[str, str, list[str] | None]] = []
                    while len(records) < n and not s.queue.empty():
                        item = s.queue.get_nowait()
                        if item[0] == tr_id and item[2] is not None:
                            records.append(item[2])
                        else:
                            rest.append(item)
                    await s.ws.send_str(data_frame(tr_id, records))
                    for item in rest:
                        await s.ws.send_str(item[1])
                else:
                    await s.ws.send_str(frame)
                s.last_sent = time.monotonic()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        except Exception:
            log.debug("writer error", exc_info=True)

    async def _reply(self, s: Session, doc: dict[str, object]) -> None:
        s.push("", json.dumps(doc, ensure_ascii=False), None)

    async def _on_text(self, s: Session, text: str) -> None:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            await self._reply(s, control("", "", "9", "OPSP0007", "JSON PARSING ERROR : invalid json format"))
            return
        if not isinstance(doc, dict):
            await self._reply(s, control("", "", "9", "OPSP0007", "JSON PARSING ERROR : invalid json format"))
            return
        header = doc.get("header") if isinstance(doc.get("header"), dict) else {}
        assert isinstance(header, dict)
        if header.get("tr_id") == "PINGPONG":
            return  # the client echoed our PINGPONG: fine
        body = doc.get("body") if isinstance(doc.get("body"), dict) else {}
        assert isinstance(body, dict)
        inp = body.get("input") if isinstance(body.get("input"), dict) else {}
        assert isinstance(inp, dict)
        tr_id = str(inp.get("tr_id", "")).strip()
        tr_key = str(inp.get("tr_key", "")).strip()
        approval = str(header.get("approval_key", "")).strip()
        tr_type = str(header.get("tr_type", "1")).strip()
        key = self.twin.auth.approval_owner(approval)
        if key is None:
            await self._reply(s, control(tr_id, tr_key, "1", "OPSP0011", f"invalid approval : {approval}"))
            return
        if s.key is None:
            holder = self.by_key.get(key.key)
            if holder is not None and holder is not s and not holder.closed:
                # one session per app key: the newcomer is told and dropped (close code 1006)
                await s.ws.send_str(json.dumps(control(tr_id, tr_key, "9", "OPSP8996", "ALREADY IN USE appkey")))
                s.hangup()
                return
            s.key = key
            self.by_key[key.key] = s
        elif s.key.key != key.key:
            await self._reply(s, control(tr_id, tr_key, "9", "OPSP8996", "ALREADY IN USE appkey"))
            return
        notice_tr = TR_NOTICE_PAPER if key.paper else TR_NOTICE_REAL
        notices = {notice_tr, TR_OVERSEAS_NOTICE_PAPER if key.paper else TR_OVERSEAS_NOTICE_REAL}
        if tr_id not in {TR_PRICE, TR_BOOK} | notices:
            await self._reply(s, control(tr_id, tr_key, "1", "OPSP8991", f"invalid tr_id : {tr_id}"))
            return
        encrypt = "Y" if tr_id in notices else "N"
        reg = (tr_id, tr_key)
        if tr_type in ("2", "0"):
            if reg not in s.regs:
                await self._reply(s, control(tr_id, tr_key, "1", "OPSP0003", "UNSUBSCRIBE ERROR(not found!)"))
                return
            s.regs.discard(reg)
            subs = self.subs.get(reg)
            if subs is not None:
                subs.discard(s)
            await self._reply(s, control(tr_id, tr_key, "0", "OPSP0001", "UNSUBSCRIBE SUCCESS", encrypt=encrypt))
            return
        if tr_id in notices:
            accounts = self.twin.accounts_of(key)
            if key.auto and not key.hts_id and tr_key:
                key.hts_id = tr_key  # an auto-provisioned key adopts the first HTS id it uses
                for a in accounts:
                    a.hts_id = tr_key
            if not tr_key or tr_key != key.hts_id:
                await self._reply(s, control("(null)", tr_key, "9", "OPSP0017", "ERROR : htsid가잘못되었습니다"))
                return
        if reg in s.regs:
            await self._reply(s, control(tr_id, tr_key, "1", "OPSP0002", "ALREADY IN SUBSCRIBE", encrypt=encrypt))
            return
        if len(s.regs) >= MAX_REGISTRATIONS or (tr_id not in notices and self.twin.faults.take_sub_refusal(tr_key)):
            await self._reply(s, control(tr_id, tr_key, "1", "OPSP0008", "MAX SUBSCRIBE OVER", encrypt=encrypt))
            return
        s.regs.add(reg)
        if tr_id not in notices:
            self.subs.setdefault(reg, set()).add(s)
        await self._reply(
            s, control(tr_id, tr_key, "0", "OPSP0000", "SUBSCRIBE SUCCESS", encrypt=encrypt, key_iv=s.key_iv)
        )


def _pingpong(when: dt.datetime) -> str:
    """Stamped with the twin's clock, like every other time it sends."""
    stamp = when.astimezone(KST).strftime("%Y%m%d%H%M%S")
    return json.dumps({"header": {"tr_id": "PINGPONG", "datetime": stamp}})
