"""Protocol tests against a running twin over real loopback sockets, with plain httpx and websockets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from kis.sim.testing import Q, T, Kis, TwinThread, ws_msg
from kis.sim.twin import TwinConfig
from kis.sim.wire import H0STASP0_FIELDS, H0STCNT0_FIELDS, aes_decrypt

pytestmark = pytest.mark.integration

INQUIRE_PRICE_FIELDS = (
    "iscd_stat_cls_code marg_rate rprs_mrkt_kor_name new_hgpr_lwpr_cls_code bstp_kor_isnm temp_stop_yn "
    "oprc_rang_cont_yn clpr_rang_cont_yn crdt_able_yn grmn_rate_cls_code elw_pblc_yn stck_prpr prdy_vrss "
    "prdy_vrss_sign prdy_ctrt acml_tr_pbmn acml_vol prdy_vrss_vol_rate stck_oprc stck_hgpr stck_lwpr stck_mxpr "
    "stck_llam stck_sdpr wghn_avrg_stck_prc hts_frgn_ehrt frgn_ntby_qty pgtr_ntby_qty pvt_scnd_dmrs_prc "
    "pvt_frst_dmrs_prc pvt_pont_val pvt_frst_dmsp_prc pvt_scnd_dmsp_prc dmrs_val dmsp_val cpfn rstc_wdth_prc "
    "stck_fcam stck_sspr aspr_unit hts_deal_qty_unit_val lstn_stcn hts_avls per pbr stac_month vol_tnrt eps bps "
    "d250_hgpr d250_hgpr_date d250_hgpr_vrss_prpr_rate d250_lwpr d250_lwpr_date d250_lwpr_vrss_prpr_rate "
    "stck_dryy_hgpr dryy_hgpr_vrss_prpr_rate dryy_hgpr_date stck_dryy_lwpr dryy_lwpr_vrss_prpr_rate dryy_lwpr_date "
    "w52_hgpr w52_hgpr_vrss_prpr_ctrt w52_hgpr_date w52_lwpr w52_lwpr_vrss_prpr_ctrt w52_lwpr_date "
    "whol_loan_rmnd_rate ssts_yn stck_shrn_iscd fcam_cnnm cpfn_cnnm apprch_rate frgn_hldn_qty vi_cls_code "
    "ovtm_vi_cls_code last_ssts_cntg_qty invt_caful_yn mrkt_warn_cls_code short_over_yn sltr_yn mang_issu_cls_code"
).split()
CCLD_FIELDS = (
    "ord_dt ord_gno_brno odno orgn_odno ord_dvsn_name sll_buy_dvsn_cd sll_buy_dvsn_cd_name pdno prdt_name ord_qty "
    "ord_unpr ord_tmd tot_ccld_qty avg_prvs cncl_yn tot_ccld_amt loan_dt ordr_empno ord_dvsn_cd cnc_cfrm_qty rmn_qty "
    "rjct_qty ccld_cndt_name inqr_ip_addr cpbc_ordp_ord_rcit_dvsn_cd cpbc_ordp_infm_mthd_dvsn_cd infm_tmd ctac_tlno "
    "prdt_type_cd excg_dvsn_cd cpbc_ordp_mtrl_dvsn_cd ord_orgno rsvn_ord_end_dt excg_id_dvsn_Cd stpm_cndt_pric "
    "stpm_efct_occr_dtmd"
).split()
BAL1_FIELDS = (
    "pdno prdt_name trad_dvsn_name bfdy_buy_qty bfdy_sll_qty thdt_buyqty thdt_sll_qty hldg_qty ord_psbl_qty "
    "pchs_avg_pric pchs_amt prpr evlu_amt evlu_pfls_amt evlu_pfls_rt evlu_erng_rt loan_dt loan_amt stln_slng_chgs "
    "expd_dt fltt_rt bfdy_cprs_icdc item_mgna_rt_name grta_rt_name sbst_pric stck_loan_unpr"
).split()
BAL2_FIELDS = (
    "dnca_tot_amt nxdy_excc_amt prvs_rcdl_excc_amt cma_evlu_amt bfdy_buy_amt thdt_buy_amt nxdy_auto_rdpt_amt "
    "bfdy_sll_amt thdt_sll_amt d2_auto_rdpt_amt bfdy_tlex_amt thdt_tlex_amt tot_loan_amt scts_evlu_amt tot_evlu_amt "
    "nass_amt fncg_gld_auto_rdpt_yn pchs_amt_smtl_amt evlu_amt_smtl_amt evlu_pfls_smtl_amt tot_stln_slng_chgs "
    "bfdy_tot_asst_evlu_amt asst_icdc_amt asst_icdc_erng_rt"
).split()


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(seed=3, tick_interval=0, rate_real=10_000, rate_paper=10_000, pingpong_s=0.3)) as tw:
        yield tw


@pytest.fixture(scope="module")
def kis(twin: TwinThread) -> Kis:
    k = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert k.issue().status_code == 200
    return k


def admin(twin: TwinThread, path: str, body: dict[str, object] | None = None) -> object:
    r = (
        httpx.post(twin.admin_url + path, json=body or {})
        if body is not None or not path.startswith("/admin/accounts")
        else httpx.get(twin.admin_url + path)
    )
    assert r.status_code == 200, r.text
    return r.json()


def best_ask(twin: TwinThread, code: str) -> int:
    return int(httpx.get(f"{twin.admin_url}/admin/book/{code}").json()["asks"][0][0])


def best_bid(twin: TwinThread, code: str) -> int:
    return int(httpx.get(f"{twin.admin_url}/admin/book/{code}").json()["bids"][0][0])


# ----------------------------------------------------------------------------------------- auth


def test_demo_credentials_have_kis_lengths(twin: TwinThread) -> None:
    assert len(twin.app_key) == 36 and len(twin.app_secret) == 180
    assert len(twin.account.split("-")[0]) == 8 and len(twin.account.split("-")[1]) == 2


def test_token_reuse_throttle_and_errors(twin: TwinThread) -> None:
    """One tokenP call per app key a minute (API.md §9): a second call inside the minute is refused
    with EGW00133 even when it would only re-return the same token; after a throttle reset the key's
    current token comes back unchanged (reused within 6 h). (The 60 s window itself: test_sim_units.)"""
    k = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    admin(twin, "/admin/faults/reset")  # start clean of earlier tests' calls with this key
    r1 = k.issue()
    assert r1.status_code == 200
    body = r1.json()
    assert list(body) == ["access_token", "access_token_token_expired", "token_type", "expires_in"]
    assert body["token_type"] == "Bearer"
    r2 = k.issue()  # within the minute: refused, although it would be a reuse answer
    assert r2.status_code == 403 and r2.json() == {
        "error_description": "접근토큰발급 잠시후 다시 시도하세요(1분당 1회)",
        "error_code": "EGW00133",
    }
    assert k.token == body["access_token"] and k.price("005930").json()["rt_cd"] == "0"  # the first still works
    admin(twin, "/admin/faults/reset")  # clears the minute
    r3 = k.issue()
    assert r3.status_code == 200 and r3.json()["access_token"] == body["access_token"]  # re-returned within 6 h
    # expire without resetting the throttle: a call within 60 s of the last one is refused
    admin(twin, "/admin/faults/expire-tokens", {"reset_throttle": False})
    r = k.price("005930")
    assert r.status_code == 500 and r.json()["msg_cd"] == "EGW00123"
    r4 = k.issue()
    assert r4.status_code == 403 and r4.json()["error_code"] == "EGW00133"
    admin(twin, "/admin/faults/expire-tokens", {"reset_throttle": True})
    r5 = k.issue()
    assert r5.status_code == 200 and r5.json()["access_token"] != body["access_token"]  # expired: a new one
    assert k.price("005930").json()["rt_cd"] == "0"
    admin(twin, "/admin/faults/reset")  # let later tests issue again
    # invalid token
    bad = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account, token="nope")
    r = bad.price("005930")
    assert r.status_code == 500 and r.json() == {
        "rt_cd": "1",
        "msg_cd": "EGW00121",
        "msg1": "유효하지 않은 token 입니다",
    }


def test_revoke_and_hashkey(twin: TwinThread) -> None:
    k = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    admin(twin, "/admin/faults/expire-tokens", {"reset_throttle": True})
    assert k.issue().status_code == 200
    r = k.http.post("/oauth2/revokeP", json={"appkey": k.app_key, "appsecret": k.app_secret, "token": k.token})
    assert r.json() == {"code": 200, "message": "접근토큰 폐기에 성공하였습니다"}
    assert k.price("005930").json()["msg_cd"] == "EGW00121"
    body = {"CANO": k.cano, "ACNT_PRDT_CD": "01", "PDNO": "005930", "ORD_QTY": "1"}
    r = k.http.post("/uapi/hashkey", headers={"appkey": k.app_key, "appsecret": k.app_secret}, json=body)
    assert r.json()["BODY"] == body and len(r.json()["HASH"]) == 64
    admin(twin, "/admin/faults/expire-tokens", {"reset_throttle": True})  # let later tests issue again


def test_paper_key_on_real_domain_and_real_tr_on_paper(twin: TwinThread) -> None:
    wrong = Kis(twin.rest_url, twin.paper_app_key, twin.paper_app_secret, twin.paper_account)
    r = wrong.issue()
    assert r.status_code == 500 and r.json()["msg_cd"] == "EGW02004"
    paper = Kis(twin.paper_rest_url, twin.paper_app_key, twin.paper_app_secret, twin.paper_account)
    assert paper.issue().status_code == 200
    r = paper.balance("TTTC8434R")
    assert r.status_code == 500 and r.json()["msg1"] == "모의투자 TR 이 아닙니다."
    r = paper.get(T + "inquire-psbl-sell", "TTTC8408R", {"CANO": paper.cano, "ACNT_PRDT_CD": "01", "PDNO": "005930"})
    assert r.json()["msg1"] == "모의투자 TR 이 아닙니다."
    assert paper.balance("VTTC8434R").json()["rt_cd"] == "0"
    # paper refuses orders priced below 1,000 won (KODEX 인버스 trades above; use a price below anyway)
    r = paper.order("VTTC0012U", "114800", 1, 995, "00")
    assert r.json()["rt_cd"] == "1" and r.json()["msg_cd"] == "40310000"
    # paper key with the real-flavour token on the real domain: EGW02004 on every call
    wrong.token = paper.token
    assert wrong.price("005930").json()["msg_cd"] == "EGW02004"


def test_unknown_path_bad_json_and_bad_tr(kis: Kis) -> None:
    r = kis.http.get("/uapi/domestic-stock/v1/quotations/nope", headers=kis.headers("FHKST01010100"))
    assert r.json()["msg_cd"] == "MCA00124"
    r = kis.http.post(T + "order-cash", headers=kis.headers("TTTC0012U"), content=b"{not json")
    assert r.status_code == 500 and r.json()["rt_cd"] != "0"
    r = kis.http.post(T + "order-cash", headers=kis.headers("TTTC0012U"), content=b"\xff\xfe")
    assert r.json()["rt_cd"] != "0"
    r = kis.get(Q + "inquire-price", "XXXX", {"FID_INPUT_ISCD": "005930"})
    assert r.json()["rt_cd"] != "0"
    r = kis.order("TTTC0012U", "005930", 1, 0, "99")
    assert r.json()["rt_cd"] != "0"
    r = kis.post(
        T + "order-cash",
        "TTTC0012U",
        {"CANO": kis.cano, "ACNT_PRDT_CD": "01", "PDNO": "005930", "ORD_DVSN": "00", "ORD_QTY": "abc", "ORD_UNPR": "1"},
    )
    assert r.json()["rt_cd"] != "0"
    assert kis.price("005930").json()["rt_cd"] == "0"  # still alive


# ----------------------------------------------------------------------------------------- envelope


def test_header_casing_and_price_fields(kis: Kis) -> None:
    r = kis.price("005930")
    raw_names = [k.decode() for k, _ in r.headers.raw]
    assert "Content-Type" in raw_names and "tr_id" in raw_names and "tr_cont" in raw_names and "gt_uid" in raw_names
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert list(body) == ["output", "rt_cd", "msg_cd", "msg1"]
    out = body["output"]
    assert list(out) == INQUIRE_PRICE_FIELDS and len(out) == 82
    assert all(isinstance(v, str) for v in out.values())
    base, hi, lo = int(out["stck_sdpr"]), int(out["stck_mxpr"]), int(out["stck_llam"])
    assert lo < int(out["stck_prpr"]) < hi and hi <= base * 13 // 10 and lo >= base * 7 // 10
    assert out["aspr_unit"] == "100"


def test_order_round_trip_balance_consistency(twin: TwinThread, kis: Kis) -> None:
    ask = best_ask(twin, "000660")
    r = kis.order("TTTC0012U", "000660", 3, ask)
    body = r.json()
    assert r.status_code == 200 and body["rt_cd"] == "0" and body["msg_cd"] == "APBK0013"
    assert list(body["output"]) == ["KRX_FWDG_ORD_ORGNO", "ODNO", "ORD_TMD"]
    odno = body["output"]["ODNO"]
    assert len(odno) == 10 and odno.isdigit()
    rows = kis.daily_ccld(ODNO=odno).json()["output1"]
    assert len(rows) == 1 and rows[0]["odno"] == odno and rows[0]["tot_ccld_qty"] == "3"
    assert list(rows[0])[:36] == CCLD_FIELDS
    bal = kis.balance().json()
    assert isinstance(bal["output2"], list) and len(bal["output2"]) == 1
    assert list(bal["output2"][0]) == BAL2_FIELDS
    hold = [h for h in bal["output1"] if h["pdno"] == "000660"][0]
    assert list(hold) == BAL1_FIELDS
    assert int(hold["hldg_qty"]) >= 3
    o2 = bal["output2"][0]
    scts = sum(int(h["evlu_amt"]) for h in bal["output1"])
    assert int(o2["scts_evlu_amt"]) == scts
    assert int(o2["tot_evlu_amt"]) == scts + int(o2["prvs_rcdl_excc_amt"])
    assert int(o2["evlu_pfls_smtl_amt"]) == int(o2["evlu_amt_smtl_amt"]) - int(o2["pchs_amt_smtl_amt"])
    for h in bal["output1"]:
        assert int(h["evlu_pfls_amt"]) == int(h["evlu_amt"]) - int(h["pchs_amt"])
    # sell them back
    bid = best_bid(twin, "000660")
    assert kis.order("TTTC0011U", "000660", 3, bid).json()["rt_cd"] == "0"
    psbl = kis.get(
        T + "inquire-psbl-order",
        "TTTC8908R",
        {"CANO": kis.cano, "ACNT_PRDT_CD": "01", "PDNO": "005930", "ORD_UNPR": "70000", "ORD_DVSN": "00"},
    ).json()
    assert int(psbl["output"]["nrcvb_buy_qty"]) * 70000 <= int(psbl["output"]["ord_psbl_cash"])


def test_order_rejections(twin: TwinThread, kis: Kis) -> None:
    assert kis.order("TTTC0012U", "005930", 1, 70_050).json()["rt_cd"] == "1"  # off the 100-won grid
    assert kis.order("TTTC0012U", "005930", 1, 10_000_000).json()["rt_cd"] == "1"  # outside ±30 %
    assert kis.order("TTTC0012U", "005930", 10_000_000, 90_000).json()["rt_cd"] == "1"  # cash
    assert kis.order("TTTC0011U", "035720", 10, 41_500).json()["rt_cd"] == "1"  # no shares
    assert kis.order("TTTC0802U", "005930", 1, 50_000).json()["rt_cd"] == "0"  # old TR id still works


def test_revise_cancel_linkage(twin: TwinThread, kis: Kis) -> None:
    bid = best_bid(twin, "035420")
    low = bid - 5 * 500
    r = kis.order("TTTC0012U", "035420", 5, low)
    orig = r.json()["output"]["ODNO"]
    rv = kis.rvsecncl("TTTC0013U", orig, "01", price=low - 500)
    assert rv.json()["rt_cd"] == "0"
    new = rv.json()["output"]["ODNO"]
    assert new != orig
    rows = {row["odno"]: row for row in kis.daily_ccld(PDNO="035420").json()["output1"]}
    assert rows[new]["orgn_odno"] == orig and rows[new]["ord_unpr"] == str(low - 500)
    assert rows[orig]["rmn_qty"] == "0"
    # partial cancel of 2, then cancel the rest
    c1 = kis.rvsecncl("TTTC0013U", new, "02", qty=2, all_qty=False).json()
    assert c1["rt_cd"] == "0"
    c2 = kis.rvsecncl("TTTC0803U", new, "02").json()
    assert c2["rt_cd"] == "0"
    rows = {row["odno"]: row for row in kis.daily_ccld(PDNO="035420").json()["output1"]}
    assert rows[c1["output"]["ODNO"]]["orgn_odno"] == new and rows[c1["output"]["ODNO"]]["cncl_yn"] == "Y"
    assert rows[new]["cnc_cfrm_qty"] == "5" and rows[new]["rmn_qty"] == "0"
    # nothing left to cancel
    assert kis.rvsecncl("TTTC0013U", new, "02").json()["rt_cd"] == "1"
    # psbl-rvsecncl no longer lists it
    out = kis.get(
        T + "inquire-psbl-rvsecncl",
        "TTTC0084R",
        {
            "CANO": kis.cano,
            "ACNT_PRDT_CD": "01",
            "INQR_DVSN_1": "0",
            "INQR_DVSN_2": "0",
            "CTX_AREA_FK100": "",
            "CTX_AREA_NK100": "",
        },
    ).json()
    assert all(row["odno"] not in (orig, new) for row in out["output"])


def test_cancel_only_unfilled_part(twin: TwinThread, kis: Kis) -> None:
    book = httpx.get(f"{twin.admin_url}/admin/book/105560").json()
    ask, ask_qty = book["asks"][0]
    # a buy bigger than the best ask level at exactly that price: partially filled, the rest rests
    r = kis.order("TTTC0012U", "105560", ask_qty + 7, ask).json()
    odno = r["output"]["ODNO"]
    row = kis.daily_ccld(ODNO=odno).json()["output1"][0]
    assert row["tot_ccld_qty"] == str(ask_qty) and row["rmn_qty"] == "7"
    c = kis.rvsecncl("TTTC0013U", odno, "02").json()
    assert c["rt_cd"] == "0"
    row = kis.daily_ccld(ODNO=odno).json()["output1"][0]
    assert row["tot_ccld_qty"] == str(ask_qty) and row["cnc_cfrm_qty"] == "7" and row["rmn_qty"] == "0"


def test_daily_ccld_paging(twin: TwinThread) -> None:
    paper = Kis(twin.paper_rest_url, twin.paper_app_key, twin.paper_app_secret, twin.paper_account)
    admin(twin, "/admin/faults/reset")  # an earlier test took this key's token less than a minute ago (§9)
    assert paper.issue().status_code == 200
    low = best_bid(twin, "005930") - 1000
    placed = [paper.order("VTTC0012U", "005930", 1, low).json()["output"]["ODNO"] for _ in range(20)]
    first = paper.daily_ccld("VTTC0081R")
    assert first.headers["tr_cont"] in ("F", "M")
    b1 = first.json()
    assert list(b1)[:2] == ["ctx_area_fk100", "ctx_area_nk100"] and len(b1["ctx_area_nk100"]) == 100
    assert len(b1["output1"]) == 15 and isinstance(b1["output2"], dict)
    second = paper.daily_ccld("VTTC0081R", tr_cont="N", nk=b1["ctx_area_nk100"], fk=b1["ctx_area_fk100"])
    assert second.headers["tr_cont"] in ("D", "E")
    seen = [r["odno"] for r in b1["output1"] + second.json()["output1"]]
    assert set(placed) <= set(seen) and len(seen) == len(set(seen))
    assert second.json()["ctx_area_nk100"].strip() == ""


def test_ioc_fok_and_market(twin: TwinThread, kis: Kis) -> None:
    book = httpx.get(f"{twin.admin_url}/admin/book/068270").json()
    ask, q = book["asks"][0]
    r = kis.order("TTTC0012U", "068270", q + 5, ask, "11").json()  # IOC: fills q, kills 5
    row = kis.daily_ccld(ODNO=r["output"]["ODNO"]).json()["output1"][0]
    assert row["tot_ccld_qty"] == str(q) and row["rmn_qty"] == "0" and row["cnc_cfrm_qty"] == "5"
    book = httpx.get(f"{twin.admin_url}/admin/book/068270").json()
    ask, q = book["asks"][0]
    r = kis.order("TTTC0012U", "068270", q + 1, ask, "12").json()  # FOK: nothing
    row = kis.daily_ccld(ODNO=r["output"]["ODNO"]).json()["output1"][0]
    assert row["tot_ccld_qty"] == "0" and row["rmn_qty"] == "0"
    r = kis.order("TTTC0012U", "068270", 2, 0, "01").json()  # market
    row = kis.daily_ccld(ODNO=r["output"]["ODNO"]).json()["output1"][0]
    assert row["tot_ccld_qty"] == "2"


# ----------------------------------------------------------------------------------------- websocket


def _recv_json(ws: object, timeout: float = 3.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        msg = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))  # type: ignore[attr-defined]
        if msg.startswith("{") and "PINGPONG" not in msg:
            return json.loads(msg)


def test_ws_prices_book_and_encrypted_notices(twin: TwinThread, kis: Kis) -> None:
    approval = kis.approval()
    with connect(twin.ws_url + "/tryitout/H0STCNT0") as ws:
        ws.send(ws_msg(approval, "H0STCNT0", "006400"))
        ack = _recv_json(ws)
        assert ack["header"] == {"tr_id": "H0STCNT0", "tr_key": "006400", "encrypt": "N"}
        assert ack["body"]["msg_cd"] == "OPSP0000" and ack["body"]["msg1"] == "SUBSCRIBE SUCCESS"  # type: ignore[index]
        ws.send(ws_msg(approval, "H0STASP0", "006400"))
        assert _recv_json(ws)["body"]["msg_cd"] == "OPSP0000"  # type: ignore[index]
        ws.send(ws_msg(approval, "H0STCNI0", twin.hts_id))
        ack = _recv_json(ws)
        assert ack["header"]["encrypt"] == "Y"  # type: ignore[index]
        out = ack["body"]["output"]  # type: ignore[index]
        key, iv = out["key"], out["iv"]
        assert len(key) == 32 and len(iv) == 16
        ws.send(ws_msg(approval, "H0STCNT0", "006400"))
        assert _recv_json(ws)["body"]["msg_cd"] == "OPSP0002"  # type: ignore[index]
        ws.send(ws_msg(approval, "H0STCNI0", "wrong-hts"))
        bad = _recv_json(ws)
        assert bad["body"]["msg_cd"] == "OPSP0017" and bad["header"]["tr_id"] == "(null)"  # type: ignore[index]
        ask = best_ask(twin, "006400")
        odno = kis.order("TTTC0012U", "006400", 2, ask).json()["output"]["ODNO"]
        notices: list[list[str]] = []
        prices: list[list[str]] = []
        books = 0
        deadline = time.monotonic() + 5
        while (len(notices) < 2 or not prices or not books) and time.monotonic() < deadline:
            msg = ws.recv(timeout=5)
            if msg.startswith("1|H0STCNI0|001|"):
                fields = aes_decrypt(msg.split("|", 3)[3], key, iv).split("^")
                assert len(fields) == 26
                notices.append(fields)
            elif msg.startswith("0|H0STCNT0|"):
                _, _, count, payload = msg.split("|", 3)
                assert len(payload.split("^")) == 46 * int(count)
                prices.append(payload.split("^"))
            elif msg.startswith("0|H0STASP0|"):
                assert len(msg.split("|", 3)[3].split("^")) == 59
                books += 1
        accept, fill = notices[0], notices[1]
        assert accept[0] == twin.hts_id and accept[2] == odno and accept[13] == "1" and accept[12] == "0"
        assert fill[2] == odno and fill[13] == "2" and int(fill[9]) == 2 and int(fill[10]) == ask
        assert prices[0][0] == "006400" and int(prices[0][2]) == ask
        assert len(H0STCNT0_FIELDS) == 46 and len(H0STASP0_FIELDS) == 59
        # unsubscribe / unknown unsubscribe
        ws.send(ws_msg(approval, "H0STCNT0", "006400", "2"))
        assert _recv_json(ws)["body"]["msg_cd"] == "OPSP0001"  # type: ignore[index]
        ws.send(ws_msg(approval, "H0STCNT0", "006400", "2"))
        assert _recv_json(ws)["body"]["msg_cd"] == "OPSP0003"  # type: ignore[index]
        ws.send("not json at all")
        assert _recv_json(ws)["body"]["rt_cd"] != "0"  # type: ignore[index]
        ws.send(ws_msg("bogus", "H0STCNT0", "005930"))
        assert _recv_json(ws)["body"]["msg_cd"] == "OPSP0011"  # type: ignore[index]


def test_ws_cap_pingpong_and_single_session(twin: TwinThread, kis: Kis) -> None:
    approval = kis.approval()
    codes = list(twin.run(lambda: list(twin.server.twin.exchange.stocks)))  # type: ignore[union-attr]
    regs = [(tr, c) for c in codes for tr in ("H0STCNT0", "H0STASP0")][:42]
    with connect(twin.ws_url + "/tryitout") as ws:
        ok = 0
        for tr, code in regs:
            ws.send(ws_msg(approval, tr, code))
            ack = _recv_json(ws)
            if ack["body"]["msg_cd"] == "OPSP0000":  # type: ignore[index]
                ok += 1
            else:
                assert ack["body"]["msg_cd"] == "OPSP0008" and ack["body"]["msg1"] == "MAX SUBSCRIBE OVER"  # type: ignore[index]
        assert ok == 41
        # PINGPONG arrives on idle (pingpong_s=0.3 in this fixture); answer it by echoing
        deadline = time.monotonic() + 5
        while True:
            msg = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            if "PINGPONG" in msg:
                assert json.loads(msg)["header"]["tr_id"] == "PINGPONG"
                ws.send(msg)
                break
        ws.ping()  # websocket-level ping is answered too
        # a second session with the same app key is told OPSP8996 and dropped
        with connect(twin.ws_url) as ws2:
            ws2.send(ws_msg(approval, "H0STCNT0", "005930"))
            reply = json.loads(ws2.recv(timeout=3))
            assert reply["body"]["msg_cd"] == "OPSP8996"
            with pytest.raises(Exception):  # noqa: B017 - the twin closes it: websockets' ConnectionClosed or a timeout
                ws2.recv(timeout=3)


def test_rate_limit_burst() -> None:
    with TwinThread(TwinConfig(seed=5, tick_interval=0)) as tw:
        k = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
        k.issue()
        codes = [k.price("005930") for _ in range(40)]
        limited = [r for r in codes if r.status_code == 500 and r.json()["msg_cd"] == "EGW00201"]
        assert limited and limited[0].json()["msg1"] == "초당 거래건수를 초과하였습니다."
        assert sum(r.status_code == 200 for r in codes) >= 20


# ----------------------------------------------------------------------------------------- faults


def test_fault_disconnect_after_acting_places_the_order(twin: TwinThread, kis: Kis) -> None:
    admin(twin, "/admin/faults/rest-disconnect", {"count": 1, "when": "after", "path_contains": "order-cash"})
    low = best_bid(twin, "005380") - 2000
    with pytest.raises(httpx.RemoteProtocolError):
        kis.order("TTTC0012U", "005380", 1, low)
    orders = httpx.get(f"{twin.admin_url}/admin/accounts/{twin.account}/orders").json()
    assert any(o["code"] == "005380" and o["price"] == low and o["open_qty"] == 1 for o in orders)
    admin(twin, "/admin/faults/rest-disconnect", {"count": 1, "when": "before", "path_contains": "order-cash"})
    with pytest.raises(httpx.RemoteProtocolError):
        kis.order("TTTC0012U", "005380", 1, low - 500)
    orders = httpx.get(f"{twin.admin_url}/admin/accounts/{twin.account}/orders").json()
    assert not any(o["code"] == "005380" and o["price"] == low - 500 for o in orders)
    admin(twin, "/admin/faults/rest-error", {"count": 2, "kind": "EGW00201"})
    assert kis.price("005930").json()["msg_cd"] == "EGW00201"
    assert kis.price("005930").json()["msg_cd"] == "EGW00201"
    assert kis.price("005930").json()["rt_cd"] == "0"
    admin(twin, "/admin/faults/reset", {})


def test_ws_drop_without_close_frame(twin: TwinThread, kis: Kis) -> None:
    from websockets.exceptions import ConnectionClosedError

    approval = kis.approval()
    with connect(twin.ws_url) as ws:
        ws.send(ws_msg(approval, "H0STCNT0", "051910"))
        _recv_json(ws)
        admin(twin, "/admin/faults/ws-drop", {})
        with pytest.raises(ConnectionClosedError) as exc:
            while True:
                ws.recv(timeout=3)
        assert exc.value.rcvd is None  # no close frame


def test_close_expires_orders_then_next_day() -> None:
    with TwinThread(TwinConfig(seed=9, tick_interval=0)) as tw:
        k = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
        k.issue()
        low = best_bid(tw, "005930") - 1000
        odno = k.order("TTTC0012U", "005930", 3, low).json()["output"]["ODNO"]
        httpx.post(tw.admin_url + "/admin/clock/close", json={})
        orders = httpx.get(f"{tw.admin_url}/admin/accounts/{tw.account}/orders").json()
        assert all(o["open_qty"] == 0 for o in orders)
        r = k.order("TTTC0012U", "005930", 1, low)
        assert r.json()["rt_cd"] == "1"  # market closed
        acct = httpx.get(f"{tw.admin_url}/admin/accounts/{tw.account}").json()
        assert acct["reserved"] == 0
        day = httpx.post(tw.admin_url + "/admin/clock/next-day", json={}).json()["day"]
        assert k.order("TTTC0012U", "005930", 1, best_bid(tw, "005930")).json()["rt_cd"] == "0"
        rows = k.daily_ccld(INQR_STRT_DT="20000101", INQR_END_DT="29991231").json()["output1"]
        assert any(r["odno"] == odno for r in rows) and any(r["ord_dt"] == day.replace("-", "") for r in rows)
