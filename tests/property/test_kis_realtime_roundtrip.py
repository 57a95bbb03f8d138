"""Round-trips: build frames from random field values, parse, compare."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.enums import Side
from kis.crypto import NoticeCipher
from kis.framebuild import TRADE_FIELDS_EXAMPLE, frame, notice26
from kis.realtime import FrameParser

KEY = "abcdefghijklmnopabcdefghijklmnop"
IV = "0123456789abcdef"

price = st.integers(min_value=1, max_value=5_000_000)
qty = st.integers(min_value=0, max_value=10**9)
code = st.from_regex(r"[0-9][0-9A-Z]{5}", fullmatch=True)
hhmmss = st.from_regex(r"(0[89]|1[0-5])[0-5][0-9][0-5][0-9]", fullmatch=True)
# any text without the separators; invalid-looking filler must not matter
filler = st.text(alphabet=st.characters(blacklist_characters="^|", blacklist_categories=("Cs",)), max_size=8)

trade_rec = st.fixed_dictionaries(
    {
        "code": code,
        "time": hhmmss,
        "price": price,
        "change": st.integers(-(10**6), 10**6),
        "open": price,
        "high": price,
        "low": price,
        "ask1": st.integers(0, 5_000_000),
        "bid1": st.integers(0, 5_000_000),
        "qty": qty,
        "cum_volume": qty,
        "cum_value": st.integers(0, 10**15),
        "ccld": st.sampled_from(["1", "3", "5"]),
        "filler": filler,
    }
)


def trade_fields(d: dict) -> list[str]:
    f = list(TRADE_FIELDS_EXAMPLE)
    f[0], f[1], f[2], f[4] = d["code"], d["time"], str(d["price"]), str(d["change"])
    f[7], f[8], f[9], f[10], f[11] = str(d["open"]), str(d["high"]), str(d["low"]), str(d["ask1"]), str(d["bid1"])
    f[12], f[13], f[14], f[21] = str(d["qty"]), str(d["cum_volume"]), str(d["cum_value"]), d["ccld"]
    f[44] = d["filler"]  # MRKT_TRTM_CLS_CODE: free text, often empty
    return f


@settings(max_examples=150, deadline=None)
@given(st.lists(trade_rec, min_size=1, max_size=6), st.integers(0, 3))
def test_trades_roundtrip(recs: list[dict], extra: int) -> None:
    rows = [trade_fields(d) + ["x"] * extra for d in recs]
    out = FrameParser().parse(frame("H0STCNT0", rows))
    assert len(out) == len(recs)
    for t, d in zip(out, recs, strict=True):
        assert (t.code, t.time, t.price, t.change, t.qty, t.cum_volume, t.cum_value) == (
            d["code"],
            d["time"],
            d["price"],
            d["change"],
            d["qty"],
            d["cum_volume"],
            d["cum_value"],
        )
        assert (t.open, t.high, t.low, t.ask1, t.bid1) == (d["open"], d["high"], d["low"], d["ask1"], d["bid1"])
        assert t.side == {"1": 1, "3": 0, "5": -1}[d["ccld"]]


notice_rec = st.fixed_dictionaries(
    {
        "odno": st.integers(1, 9_999_999_999).map(lambda n: f"{n:010d}"),
        "oodno": st.one_of(st.just(""), st.integers(1, 9_999_999_999).map(lambda n: f"{n:010d}")),
        "side": st.sampled_from(["01", "02"]),
        "code": code,
        "qty": st.integers(1, 10**6),
        "price": st.integers(1, 5_000_000),
        "order_qty": st.integers(1, 10**6),
        "fill": st.booleans(),
        "legacy": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(notice_rec, min_size=1, max_size=4), st.booleans())
def test_notices_roundtrip(recs: list[dict], encrypted: bool) -> None:
    legacy = recs[0]["legacy"]  # one layout per frame
    rows = []
    for d in recs:
        f = notice26(
            odno=d["odno"],
            oodno=d["oodno"],
            side=d["side"],
            code=d["code"],
            qty=f"{d['qty']:010d}",
            price=f"{d['price']:09d}",
            cntg="2" if d["fill"] else "1",
            acpt="2" if d["fill"] else "1",
            order_qty=f"{d['order_qty']:09d}",
            order_price=str(d["price"]),
        )
        if legacy:  # 0–17 identical, then CNTG_ISNM, CRDT_CLS, CRDT_LOAN_DATE, CNTG_ISNM40, ODER_PRC
            f = f[:18] + ["name", "", "", "name", str(d["price"])]
        rows.append(f)
    p = FrameParser()
    if encrypted:
        p.set_cipher("H0STCNI0", KEY, IV)
        text = f"1|H0STCNI0|{len(rows):03d}|" + NoticeCipher(KEY, IV).encrypt("^".join("^".join(r) for r in rows))
    else:
        text = frame("H0STCNI0", rows)
    out = p.parse(text)
    assert len(out) == len(recs)
    for n, d in zip(out, recs, strict=True):
        assert n.broker_order_id == d["odno"] and n.orig_broker_order_id == d["oodno"]
        assert n.side == (Side.SELL if d["side"] == "01" else Side.BUY) and n.code == d["code"]
        assert n.order_qty == d["order_qty"] and n.order_price == d["price"]
        if d["fill"]:
            assert (n.fill_qty, n.fill_price) == (d["qty"], d["price"])
        else:
            assert (n.fill_qty, n.fill_price) == (0, 0)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_parser(data: bytes) -> None:
    text = "0|H0STCNT0|001|" + data.decode("utf-8", errors="replace")
    try:
        FrameParser().parse(text)
    except ValueError:
        pass  # FrameError is a ValueError: dropped frame, session lives on


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            code,
            hhmmss,
            st.lists(st.tuples(st.integers(0, 5_000_000), st.integers(0, 10**9)), min_size=20, max_size=20),
            qty,
            qty,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_books_roundtrip(recs: list) -> None:
    from kis.framebuild import book_fields

    rows = []
    for c, t, levels, tot_a, tot_b in recs:
        f = book_fields(c, t)
        for i in range(10):
            f[3 + i], f[23 + i] = str(levels[i][0]), str(levels[i][1])
            f[13 + i], f[33 + i] = str(levels[10 + i][0]), str(levels[10 + i][1])
        f[43], f[44] = str(tot_a), str(tot_b)
        rows.append(f)
    out = FrameParser().parse(frame("H0STASP0", rows))
    assert len(out) == len(recs)
    for b, (c, t, levels, tot_a, tot_b) in zip(out, recs, strict=True):
        assert (b.code, b.time, b.total_ask_qty, b.total_bid_qty) == (c, t, tot_a, tot_b)
        assert list(b.asks) == levels[:10] and list(b.bids) == levels[10:]
