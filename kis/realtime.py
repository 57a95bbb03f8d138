"""Parsers for KIS real-time frames: `<enc>|<TR_ID>|<count>|<payload>` (API.md §5.5–5.8).

Data frames become typed events (kis.port Trade, Book, BrokerNotice). Batched frames (count > 1)
are split by field count; known layout variants (notices with 23 or 26 fields) are recognised by
width; unknown extra trailing fields are tolerated with one warning per TR. A malformed frame is
reported by `FrameError` and never stops the session; a record with a field that does not read
(a price of "abc") is dropped alone and counted (`bad_records`, by TR), its frame's other records
still delivered.
"""

from __future__ import annotations

from collections.abc import Callable

import logging

import msgspec

from common.enums import Side
from kis.numbers import krw
from kis.crypto import DecryptError, NoticeCipher
from kis.port import Book, BrokerNotice, HourClass, NoticeKind, Trade
from kis.reference import normalise_code  # a registration by KIS's ETN spelling ('Q500061') comes back in it

log = logging.getLogger(__name__)

TR_TRADES = "H0STCNT0"
TR_BOOK = "H0STASP0"
TR_NOTICE_REAL = "H0STCNI0"
TR_NOTICE_PAPER = "H0STCNI9"
NOTICE_TRS = frozenset({TR_NOTICE_REAL, TR_NOTICE_PAPER, "K0STCNI0", "K0STCNI9"})

TRADE_FIELDS = 46
BOOK_FIELDS = 59
NOTICE_FIELDS_LEGACY = 23
NOTICE_FIELDS = 26

_SIDE_BY_CCLD = {"1": 1, "5": -1}


class FrameError(ValueError):
    pass


class BadRecord(FrameError):
    """One record of a frame did not read; the others did."""


_int = krw  # the KIS client's one number parser: '' → 0, '+123' / '-0100' fine, '123.50' → 124


# --- layouts ---------------------------------------------------------------------------------


def record_width(tr_id: str, n_fields: int, count: int, known: tuple[int, ...]) -> int:
    """Width of one record in a frame of `count` records: a known width, or a wider one
    (extra trailing fields)."""
    if count <= 0:
        raise FrameError(f"{tr_id}: bad record count {count}")
    for w in known:
        if n_fields == w * count:
            return w
    if n_fields % count == 0 and n_fields // count > min(known):
        return n_fields // count
    raise FrameError(f"{tr_id}: {n_fields} fields do not split into {count} records of {known}")


def _coded(f: list[str], o: int) -> bool:
    """A trade or book record opens at `o`: a code as long as the first record's, then an HHMMSS time."""
    return len(f[o]) == len(f[0]) and len(f[o + 1]) == 6 and f[o + 1].isdigit()


def _same_account(f: list[str], o: int) -> bool:
    """A notice record opens at `o`: the first record's HTS id (its accounts' notices share the TR), then an
    account and an order number in digits."""
    return f[o] == f[0] and f[o + 1].isdigit() and f[o + 2].isdigit()


def _trade_with(f: list[str], o: int, num: Callable[[str], int]) -> Trade:
    return Trade(
        code=normalise_code(f[o]),
        time=f[o + 1],
        price=num(f[o + 2]),
        qty=num(f[o + 12]),
        side=_SIDE_BY_CCLD.get(f[o + 21], 0),
        cum_volume=num(f[o + 13]),
        cum_value=num(f[o + 14]),
        open=num(f[o + 7]),
        high=num(f[o + 8]),
        low=num(f[o + 9]),
        change=num(f[o + 4]),
        ask1=num(f[o + 10]),
        bid1=num(f[o + 11]),
        date=f[o + 33] if len(f) > o + 33 else "",
        market_op=f[o + 34],
        halted=f[o + 35] == "Y",
        hour_cls=HourClass.of(f[o + 43]),  # an expected price (A-D) is dropped by server/md_sanity.py
    )


def _trade(f: list[str], o: int) -> Trade:
    try:
        return _trade_with(f, o, int)
    except ValueError:  # empty or odd field: the slow, lenient path
        return _trade_with(f, o, _int)


def _book(f: list[str], o: int) -> Book:
    asks = tuple((_int(f[o + 3 + i]), _int(f[o + 23 + i])) for i in range(10))
    bids = tuple((_int(f[o + 13 + i]), _int(f[o + 33 + i])) for i in range(10))
    return Book(
        code=normalise_code(f[o]),
        time=f[o + 1],
        asks=asks,
        bids=bids,
        total_ask_qty=_int(f[o + 43]),
        total_bid_qty=_int(f[o + 44]),
        hour_cls=HourClass.of(f[o + 2]),  # a call's book (a VI's too) is crossed by nature
    )


def _notice(f: list[str], o: int, width: int) -> BrokerNotice:
    legacy = width < NOTICE_FIELDS
    rctf = f[o + 5]
    cntg_yn = f[o + 13]
    acpt_yn = f[o + 14]
    is_cancel = rctf == "2"
    is_modify = rctf == "1"
    if cntg_yn not in ("1", "2"):
        # neither an acceptance nor a fill: taken for an acceptance, a fill would go unheard until the next
        # whole reconciliation (a bad record asks for a repair from the order list at once)
        raise ValueError(f"CNTG_YN {cntg_yn!r} (1 acceptance, 2 fill)")
    if f[o + 12] == "1":
        kind = NoticeKind.REJECTED
    elif cntg_yn == "2":
        kind = NoticeKind.FILLED
    elif acpt_yn == "3" or (acpt_yn == "2" and is_cancel):
        kind = NoticeKind.CANCELLED
    elif acpt_yn == "2" and is_modify:
        kind = NoticeKind.MODIFIED
    else:
        kind = NoticeKind.ACCEPTED
    slot_qty = _int(f[o + 9])  # fill qty on a fill, order qty on an acceptance
    slot_price = _int(f[o + 10])
    oder_qty = _int(f[o + 16])
    oder_prc = _int(f[o + (22 if legacy else 25)])
    filled = kind is NoticeKind.FILLED
    if filled and (slot_qty <= 0 or slot_price <= 0):
        # a fill of nothing, or at no price, is a record that did not read (the state machine refuses it, and
        # the real fill waited for the next whole reconciliation): a bad record asks for a repair at once
        raise ValueError(f"fill of {f[o + 9]!r} shares at {f[o + 10]!r}")
    orig = f[o + 3].strip()
    return BrokerNotice(
        kind=kind,
        broker_order_id=f[o + 2].strip(),
        orig_broker_order_id="" if not orig.strip("0") else orig,
        code=normalise_code(f[o + 8]),
        side=Side.SELL if f[o + 4] == "01" else Side.BUY,
        order_qty=oder_qty or (0 if filled else slot_qty),
        order_price=oder_prc or (0 if filled else slot_price),
        fill_qty=slot_qty if filled else 0,
        fill_price=slot_price if filled else 0,
        time=f[o + 11],
        account=f[o + 1],
        is_cancel=is_cancel,
        is_modify=is_modify,
        org_no=f[o + 15],
    )


# A decrypted notice carries the account number (1) and the holder's name (17): the plaintext
# kept for people (the recorder's PLAIN records) shows neither.
_ACNT_NO, _ACNT_NAME = 1, 17


def private_fields_masked(f: list[str], width: int, count: int) -> str:
    out = list(f)
    for i in range(count):
        o = i * width
        acnt = out[o + _ACNT_NO]
        out[o + _ACNT_NO] = acnt[:2] + "*" * max(0, len(acnt) - 4) + acnt[-2:] if len(acnt) > 4 else "*" * len(acnt)
        out[o + _ACNT_NAME] = "***" if out[o + _ACNT_NAME] else ""
    return "^".join(out)


# --- control messages (JSON) ---------------------------------------------------------------


class ControlHeader(msgspec.Struct, kw_only=True):
    tr_id: str = ""
    tr_key: str = ""
    encrypt: str = ""
    datetime: str = ""


class ControlOutput(msgspec.Struct, kw_only=True):
    iv: str = ""
    key: str = ""


class ControlBody(msgspec.Struct, kw_only=True):
    rt_cd: str = ""
    msg_cd: str = ""
    msg1: str = ""
    output: ControlOutput | None = None


class Control(msgspec.Struct, kw_only=True):
    header: ControlHeader = msgspec.field(default_factory=ControlHeader)
    body: ControlBody | None = None


_control_decoder = msgspec.json.Decoder(Control)


def parse_control(text: str) -> Control:
    try:
        return _control_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise FrameError(f"bad control message: {e}") from None


# --- frames ----------------------------------------------------------------------------------


class FrameParser:
    """Per-session parser: holds the notice ciphers (from subscribe acks) and warn-once state."""

    def __init__(self) -> None:
        self.ciphers: dict[str, NoticeCipher] = {}
        self._warned: set[str] = set()
        self.frames = 0
        self.errors = 0  # frames dropped whole
        self.bad_records: dict[str, int] = {}  # TR -> records dropped for a field that does not read
        self.last_bad = ""  # the latest such problem, for the log and health
        # Recording hook: the decrypted notice frame `1|TR|count|<plaintext>`; None = off.
        self.on_plain: Callable[[str], None] | None = None

    def reset(self) -> None:
        """A new websocket session: keys of the old one are void."""
        self.ciphers.clear()

    def set_cipher(self, tr_id: str, key: str, iv: str) -> None:
        self.ciphers[tr_id] = NoticeCipher(key, iv)

    def _warn_once(self, tr_id: str, width: int, known: int) -> None:
        tag = f"{tr_id}:{width}"
        if tag not in self._warned:
            self._warned.add(tag)
            log.warning("%s records have %d fields, %d known; extra trailing fields ignored", tr_id, width, known)

    def _records(
        self, tr_id: str, read: Callable[[int], Trade | Book | BrokerNotice], count: int
    ) -> list[Trade | Book | BrokerNotice]:
        """Each record on its own: one that does not read is dropped and counted, the rest delivered.
        When every record of the frame was bad, BadRecord says so."""
        out: list[Trade | Book | BrokerNotice] = []
        for i in range(count):
            try:
                out.append(read(i))
            except (ValueError, IndexError, OverflowError) as e:
                self.bad_records[tr_id] = self.bad_records.get(tr_id, 0) + 1
                self.last_bad = f"{tr_id} record {i + 1}/{count}: {str(e)[:120]}"
        if not out and count:
            raise BadRecord(self.last_bad)
        return out

    def _whole_records(
        self, tr_id: str, f: list[str], count: int, known: tuple[int, ...], opens: Callable[[list[str], int], bool]
    ) -> int:
        """The frame's records: `count`, or more when its fields are more whole records of a known width than the
        count says, each opening as one does. Taken as one wide record (extra trailing fields) the second was lost
        without a word: a fill notice, or a legacy notice's price read from the next one's order number. Such a
        frame is counted as bad (a notice's then asks for a repair from the order list) and every record read."""
        n = len(f)
        if count <= 0 or any(n == w * count for w in known):
            return count
        for w in known:
            k = n // w
            if n % w == 0 and k > count and all(opens(f, i * w) for i in range(k)):
                self.bad_records[tr_id] = self.bad_records.get(tr_id, 0) + 1
                self.last_bad = f"{tr_id}: count {count} but {k} whole records of {w} fields (all read)"
                return k
        return count

    def parse(self, text: str) -> list[Trade | Book | BrokerNotice]:
        """Parse one data frame (starting with '0' or '1'). Raises FrameError on a bad frame."""
        parts = text.split("|", 3)
        if len(parts) != 4:
            raise FrameError("data frame without 4 '|' parts")
        enc, tr_id, count_s, payload = parts
        try:
            count = int(count_s)
        except ValueError:
            raise FrameError(f"{tr_id}: bad count {count_s!r}") from None
        self.frames += 1
        if enc == "1":
            cipher = self.ciphers.get(tr_id)
            if cipher is None:
                raise FrameError(f"{tr_id}: encrypted frame but no key from a subscribe ack in this session")
            try:
                payload = cipher.decrypt(payload)
            except DecryptError as e:
                raise FrameError(f"{tr_id}: {e}") from None
        f = payload.split("^")
        n = len(f)
        if tr_id in (TR_TRADES, TR_BOOK):
            count = self._whole_records(tr_id, f, count, (TRADE_FIELDS if tr_id == TR_TRADES else BOOK_FIELDS,), _coded)
        elif tr_id in NOTICE_TRS:
            count = self._whole_records(tr_id, f, count, (NOTICE_FIELDS, NOTICE_FIELDS_LEGACY), _same_account)
        if tr_id == TR_TRADES:
            if count == 1 and n == TRADE_FIELDS:
                return self._records(tr_id, lambda i: _trade(f, 0), 1)
            w = record_width(tr_id, n, count, (TRADE_FIELDS,))
            if w != TRADE_FIELDS:
                self._warn_once(tr_id, w, TRADE_FIELDS)
            return self._records(tr_id, lambda i: _trade(f, i * w), count)
        if tr_id == TR_BOOK:
            w = record_width(tr_id, n, count, (BOOK_FIELDS,))
            if w != BOOK_FIELDS:
                self._warn_once(tr_id, w, BOOK_FIELDS)
            return self._records(tr_id, lambda i: _book(f, i * w), count)
        if tr_id in NOTICE_TRS:
            w = record_width(tr_id, n, count, (NOTICE_FIELDS, NOTICE_FIELDS_LEGACY))
            if w not in (NOTICE_FIELDS, NOTICE_FIELDS_LEGACY):
                self._warn_once(tr_id, w, NOTICE_FIELDS if w > NOTICE_FIELDS else NOTICE_FIELDS_LEGACY)
                layout = NOTICE_FIELDS if w > NOTICE_FIELDS else NOTICE_FIELDS_LEGACY
            else:
                layout = w
            if enc == "1" and self.on_plain is not None:
                self.on_plain(f"{enc}|{tr_id}|{count_s}|{private_fields_masked(f, w, count)}")
            return self._records(tr_id, lambda i: _notice(f, i * w, layout), count)
        if tr_id not in self._warned:
            self._warned.add(tr_id)
            log.warning("frames of unhandled TR %s ignored", tr_id)
        return []
