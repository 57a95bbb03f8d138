"""The twin can split a stock between sessions (POST /admin/split {"code", "num", "den"}), as KRX and KIS show a
split on its first session (from the next day's roll): the account holds num/den times the shares at the same
purchase amount, the code's base price is the adjusted close, and its daily chart is adjusted (FID_ORG_ADJ_PRC 0).
So the gateway's split defence (the balance read as a split, the base price unlike the stored close) can meet a
real one on the twin, not only hand-built broker answers. Refused while the code trades, with its orders open, or
with fractions."""

from __future__ import annotations

import httpx

from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig

CODE = "005930"
CHART = "/uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice"


def closes(kis: Kis) -> list[int]:
    params = {
        "FID_COND_MRKT_DIV_CODE": "J",
        "FID_INPUT_ISCD": CODE,
        "FID_INPUT_DATE_1": "20000101",
        "FID_INPUT_DATE_2": "20991231",
        "FID_PERIOD_DIV_CODE": "D",
        "FID_ORG_ADJ_PRC": "0",
    }
    return [int(r["stck_clpr"]) for r in kis.get(CHART, "FHKST03010100", params).json()["output2"]]


def holding_ten(twin: TwinThread) -> tuple[httpx.Client, Kis, dict]:
    """The twin's account bought 10 of CODE at the ask: (admin client, KIS client, its holding)."""
    admin = httpx.Client(base_url=twin.admin_url, timeout=10)
    kis = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert kis.issue().status_code == 200
    ask = admin.get(f"/admin/book/{CODE}").json()["asks"][0][0]
    assert kis.order("TTTC0012U", CODE, 10, ask).json()["rt_cd"] == "0"
    return admin, kis, admin.get(f"/admin/accounts/{twin.account}").json()["holdings"][CODE]


def test_a_split_between_sessions_scales_shares_prices_and_history() -> None:
    with TwinThread(TwinConfig(seed=11, tick_interval=0, rate_real=10_000)) as twin:
        admin, kis, held = holding_ten(twin)
        assert held["qty"] == 10
        assert admin.post("/admin/split", json={"code": CODE, "num": 5, "den": 1}).status_code == 409  # trading
        resting = kis.order("TTTC0012U", CODE, 1, admin.get(f"/admin/book/{CODE}").json()["lower"]).json()
        admin.post("/admin/clock/close").raise_for_status()
        before = kis.price(CODE).json()["output"]
        history = closes(kis)
        assert resting["rt_cd"] == "0" and len(history) > 20  # (a DAY order: the close expired it)
        assert admin.post("/admin/split", json={"code": CODE, "num": 3, "den": 7}).status_code == 409  # fractions
        r = admin.post("/admin/split", json={"code": CODE, "num": 5, "den": 1})
        assert r.status_code == 200, r.text
        assert admin.post("/admin/split", json={"code": CODE, "num": 5, "den": 1}).status_code == 409  # due already
        # the balance shows it from the split's first session, as KIS's (not the evening before)
        assert admin.get(f"/admin/accounts/{twin.account}").json()["holdings"][CODE]["qty"] == 10
        assert closes(kis) == history
        last = int(before["stck_prpr"])
        admin.post("/admin/clock/next-day").raise_for_status()
        after = admin.get(f"/admin/accounts/{twin.account}").json()["holdings"][CODE]
        assert (after["qty"], after["cost"]) == (50, held["cost"])
        now = kis.price(CODE).json()["output"]
        base = int(now["stck_sdpr"])
        assert abs(base * 5 - last) < 5 * 100, (base, last)  # the adjusted close, on the grid
        adjusted = closes(kis)
        assert all(abs(a * 5 - b) <= 5 for a, b in zip(adjusted, history, strict=True)), (adjusted[:3], history[:3])
        rows = kis.balance().json()["output1"]
        row = next(x for x in rows if x["pdno"] == CODE)
        assert (row["hldg_qty"], int(row["pchs_amt"])) == ("50", held["cost"])


def test_a_bonus_issue_moves_the_prices_at_its_ex_rights_day_and_the_shares_when_they_list() -> None:
    """{"shares": false}: a bonus issue's ex-rights day (1:0.3 → 13:10): the base and the chart adjusted, the
    account's shares as they were; weeks later the new shares are credited at no cost (POST .../shares)."""
    with TwinThread(TwinConfig(seed=11, tick_interval=0, rate_real=10_000)) as twin:
        admin, kis, held = holding_ten(twin)
        admin.post("/admin/clock/close").raise_for_status()
        last = int(kis.price(CODE).json()["output"]["stck_prpr"])
        # (a string is no answer: "false" read as a real split, a review)
        assert (
            admin.post("/admin/split", json={"code": CODE, "num": 13, "den": 10, "shares": "false"}).status_code == 409
        )
        r = admin.post("/admin/split", json={"code": CODE, "num": 13, "den": 10, "shares": False})
        assert r.status_code == 200, r.text
        admin.post("/admin/clock/next-day").raise_for_status()
        after = admin.get(f"/admin/accounts/{twin.account}").json()["holdings"][CODE]
        assert (after["qty"], after["cost"]) == (10, held["cost"])  # the shares list later
        base = int(kis.price(CODE).json()["output"]["stck_sdpr"])
        assert abs(base * 13 - last * 10) < 13 * 100, (base, last)  # the ex-rights base, on the grid
        credited = admin.post(f"/admin/accounts/{twin.account}/shares", json={"code": CODE, "qty": 3})
        assert credited.status_code == 200 and credited.json() == {"qty": 13, "cost": held["cost"]}
        assert admin.post(f"/admin/accounts/{twin.account}/shares", json={"code": CODE, "qty": 0}).status_code == 409
