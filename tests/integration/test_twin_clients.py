"""The twin serves other KIS clients as KIS does (issue 18, item 6), over real loopback sockets with
plain httpx and websockets: chart call caps, FID_INPUT_HOUR_1=000000, the overseas account views
answered empty, the paper domain approving a real key for prices, a periodic PINGPONG, and the open
clock's session times on orders, prints and PINGPONG."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from kis.sim.testing import Kis, Q, TwinThread, ws_msg
from kis.sim.twin import TwinConfig

pytestmark = pytest.mark.integration

O = "/uapi/overseas-stock/v1/trading/"
SESSION = (dt.time(9, 0), dt.time(15, 20))


def in_session(hhmmss: str) -> bool:
    return SESSION[0] <= dt.datetime.strptime(hhmmss, "%H%M%S").time() <= SESSION[1]


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinThread]:
    # PINGPONG every 0.3 s whatever the traffic, never on idle alone
    cfg = TwinConfig(seed=4, tick_interval=0, rate_real=10_000, rate_paper=10_000, pingpong_s=0, pingpong_every_s=0.3)
    with TwinThread(cfg) as tw:
        yield tw


@pytest.fixture(scope="module")
def kis(twin: TwinThread) -> Kis:
    k = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert k.issue().status_code == 200
    return k


def step(twin: TwinThread, n: int = 20, code: str = "005930") -> None:
    httpx.post(twin.admin_url + "/admin/market/step", json={"n": n, "codes": [code]}).raise_for_status()


def test_chart_calls_are_capped_and_000000_is_the_latest(twin: TwinThread, kis: Kis) -> None:
    step(twin)
    params = {
        "FID_COND_MRKT_DIV_CODE": "J",
        "FID_INPUT_ISCD": "005930",
        "FID_INPUT_DATE_1": "19900101",
        "FID_INPUT_DATE_2": "29991231",
        "FID_PERIOD_DIV_CODE": "D",
        "FID_ORG_ADJ_PRC": "0",
    }
    first = kis.get(Q + "inquire-daily-itemchartprice", "FHKST03010100", params).json()["output2"]
    assert len(first) == 100
    dates = [r["stck_bsop_date"] for r in first]
    assert dates == sorted(dates, reverse=True)  # newest first
    older = dt.datetime.strptime(dates[-1], "%Y%m%d").date() - dt.timedelta(days=1)
    rest = kis.get(
        Q + "inquire-daily-itemchartprice", "FHKST03010100", {**params, "FID_INPUT_DATE_2": older.strftime("%Y%m%d")}
    ).json()["output2"]
    history = twin.run(lambda: len(twin.server.twin.exchange.stocks["005930"].history))  # type: ignore[union-attr]
    assert 0 < len(rest) < 100 and len(first) + len(rest) == history + 1  # + today's bar, nothing twice
    assert not {r["stck_bsop_date"] for r in rest} & set(dates)

    def minutes(hour: str) -> list[dict[str, str]]:
        return kis.get(
            Q + "inquire-time-itemchartprice",
            "FHKST03010200",
            {
                "FID_ETC_CLS_CODE": "",
                "FID_COND_MRKT_DIV_CODE": "J",
                "FID_INPUT_ISCD": "005930",
                "FID_INPUT_HOUR_1": hour,
                "FID_PW_DATA_INCU_YN": "N",
            },
        ).json()["output2"]

    latest = minutes("000000")
    assert latest and latest == minutes("235959") and all(in_session(r["stck_cntg_hour"]) for r in latest)
    assert minutes("085959") == []  # before the session: nothing


def test_overseas_account_views_are_empty_and_kis_shaped(twin: TwinThread, kis: Kis) -> None:
    paper = Kis(twin.paper_rest_url, twin.paper_app_key, twin.paper_app_secret, twin.paper_account)
    assert paper.issue().status_code == 200
    for k, trs in (
        (kis, ("CTRP6504R", "TTTS3012R", "TTTS3018R", "TTTS3035R")),
        (paper, ("VTRP6504R", "VTTS3012R", "VTTS3018R", "VTTS3035R")),
    ):
        acct = {"CANO": k.cano, "ACNT_PRDT_CD": k.prdt}
        present = k.get(
            O + "inquire-present-balance",
            trs[0],
            {**acct, "WCRC_FRCR_DVSN_CD": "02", "NATN_CD": "000", "TR_MKET_CD": "00", "INQR_DVSN_CD": "00"},
        )
        body = present.json()
        assert present.status_code == 200 and body["rt_cd"] == "0" and present.headers["tr_cont"] == "D"
        assert body["output1"] == [] and body["output2"] == [] and body["output3"]["tot_asst_amt"] == "0"
        for path, tr, extra, rows in (
            ("inquire-balance", trs[1], {"OVRS_EXCG_CD": "", "TR_CRCY_CD": ""}, "output1"),
            ("inquire-nccs", trs[2], {"OVRS_EXCG_CD": "", "SORT_SQN": "DS"}, "output"),
            (
                "inquire-ccnl",
                trs[3],
                {
                    "PDNO": "%",
                    "ORD_STRT_DT": "20260101",
                    "ORD_END_DT": "20260105",
                    "SLL_BUY_DVSN": "00",
                    "CCLD_NCCS_DVSN": "00",
                    "OVRS_EXCG_CD": "%",
                    "SORT_SQN": "DS",
                    "ORD_DT": "",
                    "ORD_GNO_BRNO": "",
                    "ODNO": "",
                },
                "output",
            ),
        ):
            r = k.get(O + path, tr, {**acct, **extra, "CTX_AREA_FK200": "", "CTX_AREA_NK200": ""})
            body = r.json()
            assert r.status_code == 200 and body["rt_cd"] == "0" and r.headers["tr_cont"] == "D", (path, body)
            assert body[rows] == [] and len(body["ctx_area_fk200"]) == len(body["ctx_area_nk200"]) == 200
            assert body["ctx_area_fk200"].startswith(f"{k.cano}^{k.prdt}^") and not body["ctx_area_nk200"].strip()
        # real TR ids stay refused on paper, an unknown account stays refused
        wrong = k.get(O + "inquire-present-balance", "CTRP6504R" if k is paper else "VTRP6504R", acct).json()
        assert wrong["rt_cd"] != "0"
        r = k.get(O + "inquire-balance", trs[1], {"CANO": "99999999", "ACNT_PRDT_CD": "01"})
        assert r.json()["msg_cd"] == "OPSQ2000"


def test_paper_domain_approves_a_real_key_and_pingpong_is_periodic(twin: TwinThread, kis: Kis) -> None:
    # python-kis in virtual mode asks the paper domain for its real key's approval, for live prices
    r = httpx.post(
        twin.paper_rest_url + "/oauth2/Approval",
        json={"grant_type": "client_credentials", "appkey": twin.app_key, "secretkey": twin.app_secret},
    )
    assert r.status_code == 200
    approval = r.json()["approval_key"]
    bad = httpx.post(
        twin.paper_rest_url + "/oauth2/Approval",
        json={"grant_type": "client_credentials", "appkey": twin.app_key, "secretkey": "x" * 180},
    )
    assert bad.status_code != 200  # still the real key's secret
    with connect(twin.ws_url + "/tryitout", max_queue=None) as ws:  # unread frames must not stall the close
        ws.send(ws_msg(approval, "H0STCNT0", "000660"))
        ws.send(ws_msg(approval, "H0GSCNI0", twin.hts_id))  # python-kis registers overseas notices too
        acks, prints, pings = [], [], []
        deadline = time.monotonic() + 10
        while (len(acks) < 2 or len(prints) < 3 or len(pings) < 2) and time.monotonic() < deadline:
            step(twin, 1, "000660")  # traffic all along (and no idle PINGPONG here): it is periodic
            msg = ws.recv(timeout=2)
            if msg.startswith("0|H0STCNT0|"):
                prints.append(msg.split("|", 3)[3].split("^"))
            elif "PINGPONG" in msg:
                pings.append(json.loads(msg)["header"]["datetime"])
            elif msg.startswith("{"):
                acks.append(json.loads(msg))
        assert [a["body"]["msg_cd"] for a in acks] == ["OPSP0000", "OPSP0000"]
        assert acks[1]["header"]["encrypt"] == "Y" and len(acks[1]["body"]["output"]["key"]) == 32
        assert len(prints) >= 3 and len(pings) >= 2
        # the open clock's synthetic session day: prints and PINGPONG stamped in KRX session time
        day = httpx.get(twin.admin_url + "/admin/state").json()["now"][:10].replace("-", "")
        assert all(in_session(p[1]) for p in prints)
        assert all(d[:8] == day and in_session(d[8:]) for d in pings), pings


def test_open_clock_orders_and_fills_in_session_time(twin: TwinThread, kis: Kis) -> None:
    step(twin, 5, "035420")
    ask = int(httpx.get(f"{twin.admin_url}/admin/book/035420").json()["asks"][0][0])
    order = kis.order("TTTC0012U", "035420", 1, ask).json()
    assert order["rt_cd"] == "0" and in_session(order["output"]["ORD_TMD"])
    row = kis.daily_ccld(ODNO=order["output"]["ODNO"]).json()["output1"][0]
    assert row["tot_ccld_qty"] == "1" and in_session(row["ord_tmd"]) and in_session(row["infm_tmd"])
    state = httpx.get(twin.admin_url + "/admin/state").json()
    assert SESSION[0] <= dt.datetime.fromisoformat(state["now"]).time() <= SESSION[1]
