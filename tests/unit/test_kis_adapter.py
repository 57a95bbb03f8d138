"""KisBroker request/response mapping against KIS answers served on a loopback socket
(tests/fakes/kis_http.py): what the adapter sends and how it reads what comes back."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
from pathlib import Path

import httpx
import pytest

from common.config import BrokerConfig, BrokerEnv
from common.enums import OrderType, Side, TimeInForce
from kis.adapter import KisBroker, report_from_row
from kis.credentials import Credentials
from kis.env import environment_for
from kis.port import BrokerCancel, BrokerModify, BrokerOrder, BrokerRejected
from kis.wire import DailyCcldRow
from tests.fakes.kis_http import LoopbackKis, close_all

CREDS = Credentials("A" * 36, "S" * 180, "12345678-01", "hts")


def aio(fn):
    @functools.wraps(fn)
    def run(*a, **k):
        try:
            return asyncio.run(asyncio.wait_for(fn(*a, **k), 20))
        finally:
            close_all()

    return run


class FakeKisRest:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        p = req.url.path
        if p == "/oauth2/tokenP":
            return httpx.Response(
                200,
                json={
                    "access_token": "tok",
                    "token_type": "Bearer",
                    "expires_in": 86400,
                    "access_token_token_expired": "2099-01-01 00:00:00",
                },
            )
        if p.endswith("order-cash") or p.endswith("order-rvsecncl"):
            return httpx.Response(
                200,
                json={
                    "rt_cd": "0",
                    "msg_cd": "APBK0013",
                    "msg1": "주문 전송 완료 되었습니다.",
                    "output": {
                        "KRX_FWDG_ORD_ORGNO": "06010",
                        "ODNO": f"{len(self.requests):010d}",
                        "ORD_TMD": "093000",
                    },
                },
            )
        if p.endswith("inquire-balance"):
            return httpx.Response(
                200,
                headers={"tr_cont": "D"},
                json={
                    "rt_cd": "0",
                    "msg_cd": "KIOK0510",
                    "msg1": "조회가 완료되었습니다",
                    "output1": [
                        {
                            "pdno": "005930",
                            "hldg_qty": "10",
                            "ord_psbl_qty": "7",
                            "pchs_avg_pric": "71900.0000",
                            "pchs_amt": "719000",
                            "prpr": "72000",
                        },
                        {
                            "pdno": "000660",
                            "hldg_qty": "0",
                            "ord_psbl_qty": "0",
                            "pchs_avg_pric": "0.0000",
                            "pchs_amt": "0",
                            "prpr": "130000",
                        },
                    ],
                    "output2": [
                        {
                            "dnca_tot_amt": "346455",
                            "prvs_rcdl_excc_amt": "300000",
                            "scts_evlu_amt": "1759600",
                            "tot_evlu_amt": "2106055",
                        }
                    ],
                    "ctx_area_fk100": "",
                    "ctx_area_nk100": "",
                },
            )
        if p.endswith("inquire-psbl-order"):
            return httpx.Response(
                200, json={"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "", "output": {"ord_psbl_cash": "250000"}}
            )
        return httpx.Response(500, json={"rt_cd": "1", "msg_cd": "MCA00124", "msg1": "해당 서비스를 찾을수 없습니다."})


def broker(tmp_path: Path, fake: FakeKisRest, env: BrokerEnv = BrokerEnv.SIM) -> KisBroker:
    cfg = BrokerConfig(env=env, rest_url=LoopbackKis(fake).url, ws_url="ws://kis.test:1", rate_per_s=1000)
    return KisBroker(environment_for(cfg, sim_paper=env == BrokerEnv.PAPER), CREDS, tmp_path)


@aio
async def test_submit_modify_cancel_bodies(tmp_path: Path) -> None:
    fake = FakeKisRest()
    b = broker(tmp_path, fake)
    ack = await b.submit(BrokerOrder(client_order_id="a-20240101-1", code="005930", side=Side.SELL, qty=3, price=72000))
    assert ack.org_no == "06010" and ack.broker_order_id and ack.time == "093000"
    req = fake.requests[-1]
    assert req.headers["tr_id"] == "TTTC0011U"
    assert json.loads(req.content) == {
        "CANO": "12345678",
        "ACNT_PRDT_CD": "01",
        "PDNO": "005930",
        "SLL_TYPE": "01",
        "ORD_DVSN": "00",
        "ORD_QTY": "3",
        "ORD_UNPR": "72000",
        "CNDT_PRIC": "",
        "EXCG_ID_DVSN_CD": "KRX",
    }
    await b.submit(
        BrokerOrder(
            client_order_id="a-20240101-2",
            code="005930",
            side=Side.BUY,
            qty=1,
            price=99,
            order_type=OrderType.MARKET,
            tif=TimeInForce.IOC,
        )
    )
    body = json.loads(fake.requests[-1].content)
    assert (
        fake.requests[-1].headers["tr_id"] == "TTTC0012U"
        and body["ORD_DVSN"] == "13"
        and body["ORD_UNPR"] == "0"
        and body["SLL_TYPE"] == ""
    )
    await b.modify(
        BrokerModify(
            client_order_id="x", broker_order_id="0000000001", org_no="06010", code="005930", qty=0, price=71000
        )
    )
    body = json.loads(fake.requests[-1].content)
    assert (
        body["RVSE_CNCL_DVSN_CD"],
        body["ORGN_ODNO"],
        body["KRX_FWDG_ORD_ORGNO"],
        body["QTY_ALL_ORD_YN"],
        body["ORD_QTY"],
        body["ORD_UNPR"],
    ) == ("01", "0000000001", "06010", "Y", "0", "71000")
    await b.cancel(
        BrokerCancel(
            client_order_id="x", broker_order_id="0000000001", org_no="06010", code="005930", qty=2, all_qty=False
        )
    )
    body = json.loads(fake.requests[-1].content)
    assert (body["RVSE_CNCL_DVSN_CD"], body["QTY_ALL_ORD_YN"], body["ORD_QTY"], body["ORD_UNPR"]) == (
        "02",
        "N",
        "2",
        "0",
    )
    with pytest.raises(BrokerRejected):
        await b.submit(
            BrokerOrder(
                client_order_id="x",
                code="005930",
                side=Side.BUY,
                qty=1,
                price=1,
                order_type=OrderType.PRIORITY,
                tif=TimeInForce.FOK,
            )
        )
    await b.rest.aclose()


@aio
async def test_paper_tr_ids(tmp_path: Path) -> None:
    fake = FakeKisRest()
    b = broker(tmp_path, fake, BrokerEnv.PAPER)
    await b.submit(BrokerOrder(client_order_id="x", code="005930", side=Side.BUY, qty=1, price=72000))
    assert fake.requests[-1].headers["tr_id"] == "VTTC0012U"
    await b.positions()
    assert fake.requests[-1].headers["tr_id"] == "VTTC8434R"
    await b.rest.aclose()


@aio
async def test_positions_and_account(tmp_path: Path) -> None:
    fake = FakeKisRest()
    b = broker(tmp_path, fake)
    [pos] = await b.positions()
    assert (pos.code, pos.qty, pos.sellable_qty, pos.avg_price, pos.purchase_value, pos.last_price) == (
        "005930",
        10,
        7,
        "71900.0000",
        719000,
        72000,
    )
    acct = await b.account()
    assert (acct.cash, acct.orderable_cash, acct.settlement_cash, acct.total_eval, acct.positions_eval) == (
        346455,
        250000,
        300000,
        2106055,
        1759600,
    )
    await b.rest.aclose()


def test_report_from_rows() -> None:
    orig = report_from_row(
        DailyCcldRow(
            ord_dt="20240102",
            ord_gno_brno="06010",
            odno="0000000010",
            orgn_odno="",
            sll_buy_dvsn_cd="02",
            pdno="005930",
            ord_qty="10",
            ord_unpr="72000",
            ord_tmd="090001",
            tot_ccld_qty="4",
            avg_prvs="71950.5",
            tot_ccld_amt="287802",
            rmn_qty="0",
            cnc_cfrm_qty="6",
            rjct_qty="0",
        )
    )
    assert (orig.broker_order_id, orig.orig_broker_order_id, orig.side, orig.filled_qty, orig.avg_fill_price) == (
        "0000000010",
        "",
        Side.BUY,
        4,
        71951,
    )
    assert (orig.filled_value, orig.remaining_qty, orig.cancelled_qty, orig.is_cancel, orig.is_modify) == (
        287802,
        0,
        6,
        False,
        False,
    )
    cx = report_from_row(
        DailyCcldRow(
            odno="0000000011",
            orgn_odno="0000000010",
            sll_buy_dvsn_cd="02",
            sll_buy_dvsn_cd_name="매수취소*",
            cncl_yn="Y",
            ord_qty="6",
        )
    )
    assert cx.is_cancel and not cx.is_modify and cx.orig_broker_order_id == "0000000010"
    md = report_from_row(
        DailyCcldRow(
            odno="0000000012",
            orgn_odno="0000000010",
            sll_buy_dvsn_cd="01",
            sll_buy_dvsn_cd_name="BUY AMEND*",
            cncl_yn="N",
            cncl_cfrm_qty="2",
        )
    )
    assert md.is_modify and md.side == Side.SELL and md.cancelled_qty == 2
    assert report_from_row(DailyCcldRow(odno="1", orgn_odno="0000000000")).orig_broker_order_id == ""


@aio
async def test_order_reports_day_query(tmp_path: Path) -> None:
    fake = FakeKisRest()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("inquire-daily-ccld"):
            fake.requests.append(req)
            return httpx.Response(
                200,
                headers={"tr_cont": "D"},
                json={
                    "rt_cd": "0",
                    "msg_cd": "KIOK0510",
                    "msg1": "",
                    "output1": [{"odno": "0000000001", "ord_qty": "1", "pdno": "005930", "sll_buy_dvsn_cd": "02"}],
                    "output2": {"tot_ord_qty": "1"},
                },
            )
        return fake(req)

    b = KisBroker(
        environment_for(
            BrokerConfig(
                env=BrokerEnv.SIM, rest_url=LoopbackKis(handler).url, ws_url="ws://kis.test:1", rate_per_s=1000
            )
        ),
        CREDS,
        tmp_path,
    )
    [r] = await b.order_reports(dt.date(2024, 1, 2))
    q = fake.requests[-1].url.params
    assert (q["INQR_STRT_DT"], q["INQR_END_DT"], q["CCLD_DVSN"], q["SLL_BUY_DVSN_CD"]) == (
        "20240102",
        "20240102",
        "00",
        "00",
    )
    assert fake.requests[-1].headers["tr_id"] == "TTTC0081R" and r.broker_order_id == "0000000001"
    await b.rest.aclose()


@aio
async def test_a_notice_of_another_account_under_the_hts_id_is_not_ours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """KIS tells every account of an HTS ID on its one notice slot (a person's 위탁 and ISA accounts) and
    may number each account's orders on its own: a fill of the other account's order 0000002891 was applied to
    ours of the same number. Only this account's notices reach the gateway (one without an account too);
    the others are counted, said once, the account masked."""
    from kis.framebuild import frame, notice26
    from kis.realtime import FrameParser

    b = broker(tmp_path, FakeKisRest())
    p = FrameParser()

    def notice(account: str) -> object:
        fields = notice26(cntg="2", acpt="2", qty="0000000003", price="000071800")
        fields[1] = account
        [n] = p.parse(frame("H0STCNI0", [fields]))
        return n

    for account in ("1234567801", "9876543201", "1234567802", "", "9876543201", "12345678", "1234-5678-01", "A1"):
        b._emit(notice(account))  # type: ignore[arg-type]
    got = []
    while not b._events.empty():
        got.append(b._events.get_nowait().account)  # type: ignore[union-attr]
    # ours (also as CANO alone, or with a dash), none, and a form we do not know are kept
    assert got == ["1234567801", "", "12345678", "1234-5678-01", "A1"]
    assert b.others_notices == 3 and b.health().others_notices == 3  # (`ktrader status` shows it)
    said = [r.getMessage() for r in caplog.records if "another account" in r.getMessage()]
    assert len(said) == 1 and "98******-01" in said[0] and "9876543201" not in said[0], said
    await b.rest.aclose()
