from __future__ import annotations

import logging

import pytest

from common.enums import Side
from kis.crypto import DecryptError, NoticeCipher
from kis.port import Book, BrokerNotice, HourClass, NoticeKind, Trade
from kis.realtime import BadRecord, FrameError, FrameParser, parse_control
from kis.framebuild import NOTICE23_ACCEPT, NOTICE23_FILL, TRADE_FIELDS_EXAMPLE, book_fields, frame, notice26

KEY = "abcdefghijklmnopabcdefghijklmnop"
IV = "0123456789abcdef"


def test_official_trade_example() -> None:
    assert len(TRADE_FIELDS_EXAMPLE) == 46
    [t] = FrameParser().parse(frame("H0STCNT0", [TRADE_FIELDS_EXAMPLE]))
    assert t == Trade(
        code="005930",
        time="093354",
        price=71900,
        qty=1,
        side=1,
        cum_volume=3052507,
        cum_value=219853394500,
        open=72100,
        high=72400,
        low=71700,
        change=-100,
        ask1=71900,
        bid1=71800,
        date="20230612",  # BSOP_DATE
        hour_cls=HourClass.REGULAR,  # HOUR_CLS_CODE 0
        market_op="20",  # NEW_MKOP_CLS_CODE: in session, normal
        halted=False,  # TRHT_YN N
    )


def test_batched_trades_are_all_parsed() -> None:
    recs = []
    for i in range(4):
        r = list(TRADE_FIELDS_EXAMPLE)
        r[1] = f"09335{i}"
        r[12] = str(i + 1)
        r[21] = "5"
        recs.append(r)
    out = FrameParser().parse(frame("H0STCNT0", recs))
    assert [t.qty for t in out] == [1, 2, 3, 4]
    assert [t.time for t in out] == ["093350", "093351", "093352", "093353"]
    assert all(t.side == -1 for t in out)


def test_empty_fields_become_zero() -> None:
    r = list(TRADE_FIELDS_EXAMPLE)
    r[10] = r[11] = ""
    r[21] = "3"  # pre-open: no aggressor
    [t] = FrameParser().parse(frame("H0STCNT0", [r]))
    assert (t.ask1, t.bid1, t.side, t.price) == (0, 0, 0, 71900)


def test_extra_trailing_fields_warn_once_and_parse(caplog: pytest.LogCaptureFixture) -> None:
    p = FrameParser()
    r = [*TRADE_FIELDS_EXAMPLE, "NEW1", "NEW2"]
    with caplog.at_level(logging.WARNING):
        a = p.parse(frame("H0STCNT0", [r, r]))
        b = p.parse(frame("H0STCNT0", [r]))
    assert len(a) == 2 and len(b) == 1 and a[0] == b[0]
    assert sum("extra trailing" in m for m in caplog.messages) == 1


def test_bad_field_count_raises_frame_error() -> None:
    with pytest.raises(FrameError):
        FrameParser().parse(frame("H0STCNT0", [TRADE_FIELDS_EXAMPLE[:40]]))
    with pytest.raises(FrameError):
        FrameParser().parse("0|H0STCNT0|xx|1^2")
    with pytest.raises(FrameError):
        FrameParser().parse("0|H0STCNT0")


def test_book() -> None:
    [b] = FrameParser().parse(frame("H0STASP0", [book_fields()]))
    assert isinstance(b, Book)
    assert b.asks[0] == (71900, 100) and b.asks[9] == (72800, 109)
    assert b.bids[0] == (71800, 200) and b.bids[9] == (70900, 209)
    assert (b.total_ask_qty, b.total_bid_qty) == (5000, 6000)
    two = FrameParser().parse(frame("H0STASP0", [book_fields("005930"), book_fields("000660")]))
    assert [x.code for x in two] == ["005930", "000660"]


def test_legacy_23_field_notices_plain_and_encrypted() -> None:
    p = FrameParser()
    assert len(NOTICE23_ACCEPT) == 23 and len(NOTICE23_FILL) == 23
    [acc] = p.parse(frame("H0STCNI0", [NOTICE23_ACCEPT]))
    assert acc.kind == NoticeKind.ACCEPTED and acc.broker_order_id == "0000002891"
    assert acc.orig_broker_order_id == "" and acc.side == Side.BUY and acc.code == "136480"
    assert (acc.order_qty, acc.fill_qty, acc.org_no) == (1, 0, "06010")
    p.set_cipher("H0STCNI0", KEY, IV)
    enc = NoticeCipher(KEY, IV).encrypt("^".join(NOTICE23_FILL))
    [fill] = p.parse(f"1|H0STCNI0|001|{enc}")
    assert fill.kind == NoticeKind.FILLED and (fill.fill_qty, fill.fill_price) == (1, 3190)


def test_26_field_notices_kinds() -> None:
    p = FrameParser()
    p.set_cipher("H0STCNI9", KEY, IV)
    c = NoticeCipher(KEY, IV)
    cases = [
        (notice26(), NoticeKind.ACCEPTED),
        (notice26(cntg="2", acpt="2", qty="0000000003", price="000071800"), NoticeKind.FILLED),
        (notice26(rfus="1"), NoticeKind.REJECTED),
        (notice26(odno="0000002900", oodno="0000002891", rctf="2", acpt="2"), NoticeKind.CANCELLED),
        (notice26(odno="0000002901", oodno="0000002891", rctf="1", acpt="2"), NoticeKind.MODIFIED),
        (notice26(acpt="3"), NoticeKind.CANCELLED),
    ]
    for fields, kind in cases:
        [n] = p.parse(f"1|H0STCNI9|001|{c.encrypt('^'.join(fields))}")
        assert isinstance(n, BrokerNotice) and n.kind == kind, fields
    [fill] = p.parse(f"1|H0STCNI9|001|{c.encrypt('^'.join(cases[1][0]))}")
    assert (fill.fill_qty, fill.fill_price, fill.order_qty, fill.order_price) == (3, 71800, 10, 71900)
    [cx] = p.parse(f"1|H0STCNI9|001|{c.encrypt('^'.join(cases[3][0]))}")
    assert cx.orig_broker_order_id == "0000002891" and cx.is_cancel


@pytest.mark.parametrize(
    "fields",
    [
        notice26(cntg="2", acpt="2", qty="", price="000071800"),  # a fill of no shares
        notice26(cntg="2", acpt="2", qty="-0000000003", price="000071800"),
        notice26(cntg="2", acpt="2", qty="0000000003", price=""),  # at no price
        notice26(cntg="", acpt="2", qty="0000000003", price="000071800"),  # neither acceptance nor fill
    ],
    ids=["no-qty", "negative-qty", "no-price", "no-cntg-flag"],
)
def test_a_notice_whose_fill_does_not_read_is_a_bad_record(fields: list[str]) -> None:
    """A fill notice with an empty or negative quantity, no price, or an empty CNTG_YN was delivered as a
    fill the state machine refused (logged at info) or as an acceptance: the real fill went unheard until the
    next whole reconciliation. A bad record asks for a repair at once (kis/ws.py: a Gap)."""
    p = FrameParser()
    with pytest.raises(BadRecord):
        p.parse(frame("H0STCNI0", [fields]))
    assert p.bad_records == {"H0STCNI0": 1}
    good = notice26(odno="0000002892", cntg="2", acpt="2", qty="0000000003", price="000071800")
    [n] = p.parse(frame("H0STCNI0", [fields, good]))  # the frame's good record still arrives
    assert isinstance(n, BrokerNotice) and n.kind == NoticeKind.FILLED and n.broker_order_id == "0000002892"


def test_notice_batch_and_extra_fields() -> None:
    p = FrameParser()
    recs = [notice26(odno=f"000000000{i}") + ["EXTRA"] for i in range(3)]
    out = p.parse(frame("H0STCNI0", recs))
    assert [n.broker_order_id for n in out] == ["0000000000", "0000000001", "0000000002"]
    assert all(n.order_price == 71900 for n in out)  # layout still 26, extra ignored


def test_encrypted_without_key_and_bad_ciphertext() -> None:
    p = FrameParser()
    with pytest.raises(FrameError):
        p.parse("1|H0STCNI0|001|AAAA")
    p.set_cipher("H0STCNI0", KEY, IV)
    with pytest.raises(FrameError):
        p.parse("1|H0STCNI0|001|not base64 at all!")
    with pytest.raises(DecryptError):
        NoticeCipher("short", IV)
    p.reset()
    assert not p.ciphers


def test_unknown_tr_is_ignored() -> None:
    assert FrameParser().parse("0|H0STMKO0|001|005930^N^^112") == []


def test_control_messages() -> None:
    ack = parse_control(
        '{"header":{"tr_id":"H0STCNI0","tr_key":"myhts","encrypt":"Y"},"body":{"rt_cd":"0","msg_cd":"OPSP0000",'
        '"msg1":"SUBSCRIBE SUCCESS","output":{"iv":"0123456789abcdef","key":"abcdefghijklmnopabcdefghijklmnop"}}}'
    )
    assert ack.body and ack.body.output and ack.body.output.iv == IV and ack.header.encrypt == "Y"
    ping = parse_control('{"header":{"tr_id":"PINGPONG","datetime":"20240101093000"}}')
    assert ping.header.tr_id == "PINGPONG" and ping.body is None
    with pytest.raises(FrameError):
        parse_control("{not json")
