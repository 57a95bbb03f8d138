"""Builders of KIS real-time frames, shaped exactly as in API.md §5.5–5.8 (tests, bench, fixtures)."""

from __future__ import annotations

# Official H0STCNT0 example (API.md §5.5), 46 fields.
TRADE_FIELDS_EXAMPLE = (
    "005930^093354^71900^5^-100^-0.14^72023.83^72100^72400^71700^71900^71800^1^3052507^219853394500"
    "^5105^6937^1832^84.90^1366314^1159996^1^0.39^20.28^090020^5^-200^090820^5^-500^092619^2^200"
    "^20230612^20^N^65945^216924^1118750^2199206^0.05^2424142^125.92^0^^72100"
).split("^")

# Workbook notice examples, legacy 23-field layout (API.md §5.8).
NOTICE23_ACCEPT = (
    "HTS ID^1234567801^0000002891^^02^0^01^0^136480^0000000001^000000000^094941^0^1^1^06010^000000001^김한투^하림^10^^"
    "하림^"
).split("^")
NOTICE23_FILL = (
    "HTS ID^1234567801^0000002891^^02^0^00^0^136480^0000000001^000003190^094941^0^2^2^06010^000000001^김한투^하림^10^^"
    "하림^000000000"
).split("^")


def notice26(
    *,
    odno: str = "0000002891",
    oodno: str = "",
    side: str = "02",
    rctf: str = "0",
    code: str = "005930",
    qty: str = "0000000010",
    price: str = "000071900",
    hour: str = "094941",
    rfus: str = "0",
    cntg: str = "1",
    acpt: str = "1",
    order_qty: str = "000000010",
    order_price: str = "71900",
) -> list[str]:
    return [
        "myhtsid",
        "1234567801",
        odno,
        oodno,
        side,
        rctf,
        "00",
        "0",
        code,
        qty,
        price,
        hour,
        rfus,
        cntg,
        acpt,
        "06010",
        order_qty,
        "김한투",
        "",
        "1",
        "Y",
        "   ",
        "",
        "",
        "삼성전자",
        order_price,
    ]


def frame(tr_id: str, records: list[list[str]], enc: str = "0") -> str:
    payload = "^".join("^".join(r) for r in records)
    return f"{enc}|{tr_id}|{len(records):03d}|{payload}"


def book_fields(code: str = "005930", hour: str = "093354") -> list[str]:
    asks = [str(71900 + 100 * i) for i in range(10)]
    bids = [str(71800 - 100 * i) for i in range(10)]
    ask_q = [str(100 + i) for i in range(10)]
    bid_q = [str(200 + i) for i in range(10)]
    tail = ["5000", "6000", "0", "0", "0", "0", "0", "-72000", "5", "-100.00", "3052507", "10", "-20", "0", "0", "0"]
    f = [code, hour, "0", *asks, *bids, *ask_q, *bid_q, *tail]
    assert len(f) == 59
    return f
