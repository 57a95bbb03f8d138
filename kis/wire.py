"""Typed KIS REST request/response bodies (msgspec Structs), field names exactly as on the wire.

Every value on the wire is a string, so every field here is `str`; conversion to integer KRW
happens in the adapter. Response fields default to "" so a missing field is not an error, and
unknown fields are ignored (KIS adds fields over time). Request Structs are encoded in field order.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Envelope(msgspec.Struct, kw_only=True):
    rt_cd: str = ""
    msg_cd: str = ""
    msg1: str = ""


class Paged(Envelope, kw_only=True):
    ctx_area_fk100: str = ""
    ctx_area_nk100: str = ""


# --- auth ------------------------------------------------------------------------------------


class TokenRequest(msgspec.Struct, kw_only=True):
    grant_type: str
    appkey: str
    appsecret: str


class TokenResponse(Envelope, kw_only=True):
    access_token: str = ""
    token_type: str = ""
    expires_in: str | int = ""
    access_token_token_expired: str = ""
    # error bodies of /oauth2 use these names
    error_code: str = ""
    error_description: str = ""


class ApprovalRequest(msgspec.Struct, kw_only=True):
    grant_type: str
    appkey: str
    secretkey: str  # sic: not "appsecret" (API.md §2.3)


class ApprovalResponse(Envelope, kw_only=True):
    approval_key: str = ""
    error_code: str = ""
    error_description: str = ""


# --- orders ----------------------------------------------------------------------------------


class OrderCashRequest(msgspec.Struct, kw_only=True):
    CANO: str
    ACNT_PRDT_CD: str
    PDNO: str
    SLL_TYPE: str  # "01" on sells, "" on buys
    ORD_DVSN: str
    ORD_QTY: str
    ORD_UNPR: str
    CNDT_PRIC: str = ""
    EXCG_ID_DVSN_CD: str = "KRX"


class OrderRvsecnclRequest(msgspec.Struct, kw_only=True):
    CANO: str
    ACNT_PRDT_CD: str
    KRX_FWDG_ORD_ORGNO: str
    ORGN_ODNO: str
    ORD_DVSN: str
    RVSE_CNCL_DVSN_CD: str  # 01 revise, 02 cancel
    ORD_QTY: str
    ORD_UNPR: str
    QTY_ALL_ORD_YN: str
    CNDT_PRIC: str = ""
    EXCG_ID_DVSN_CD: str = "KRX"


class OrderResponse(Envelope, kw_only=True):
    # The layout documents lower-case keys, examples show upper-case: decode as a dict, pick either.
    # Values are checked one by one (kis.adapter): an odd value must not lose the whole reply.
    output: dict[str, Any] | None = None


# --- account inquiries -----------------------------------------------------------------------


class DailyCcldRequest(msgspec.Struct, kw_only=True):
    CANO: str
    ACNT_PRDT_CD: str
    INQR_STRT_DT: str
    INQR_END_DT: str
    SLL_BUY_DVSN_CD: str = "00"
    INQR_DVSN: str = "01"  # chronological
    PDNO: str = ""
    CCLD_DVSN: str = "00"
    ORD_GNO_BRNO: str = ""
    ODNO: str = ""
    INQR_DVSN_3: str = "00"
    INQR_DVSN_1: str = ""
    EXCG_ID_DVSN_CD: str = "KRX"
    CTX_AREA_FK100: str = ""
    CTX_AREA_NK100: str = ""


class DailyCcldRow(msgspec.Struct, kw_only=True):
    ord_dt: str = ""
    ord_gno_brno: str = ""
    odno: str = ""
    orgn_odno: str = ""
    ord_dvsn_name: str = ""
    sll_buy_dvsn_cd: str = ""
    sll_buy_dvsn_cd_name: str = ""
    pdno: str = ""
    prdt_name: str = ""
    ord_qty: str = ""
    ord_unpr: str = ""
    ord_tmd: str = ""
    tot_ccld_qty: str = ""
    avg_prvs: str = ""
    cncl_yn: str = ""
    tot_ccld_amt: str = ""
    ord_dvsn_cd: str = ""
    cnc_cfrm_qty: str = ""
    cncl_cfrm_qty: str = ""  # the official example's spelling (API.md §4.4)
    rmn_qty: str = ""
    rjct_qty: str = ""
    ccld_cndt_name: str = ""
    excg_dvsn_cd: str = ""
    ord_orgno: str = ""
    rvse_cncl_dvsn_name: str = ""


class DailyCcldSummary(msgspec.Struct, kw_only=True):
    tot_ord_qty: str = ""
    tot_ccld_qty: str = ""
    tot_ccld_amt: str = ""
    prsm_tlex_smtl: str = ""
    pchs_avg_pric: str = ""


class DailyCcldResponse(Paged, kw_only=True):
    output1: list[DailyCcldRow] = []
    output2: DailyCcldSummary | list[DailyCcldSummary] | None = None


class BalanceRequest(msgspec.Struct, kw_only=True):
    CANO: str
    ACNT_PRDT_CD: str
    AFHR_FLPR_YN: str = "N"
    OFL_YN: str = ""
    INQR_DVSN: str = "02"
    UNPR_DVSN: str = "01"
    FUND_STTL_ICLD_YN: str = "N"
    FNCG_AMT_AUTO_RDPT_YN: str = "N"
    PRCS_DVSN: str = "00"
    CTX_AREA_FK100: str = ""
    CTX_AREA_NK100: str = ""


class BalanceRow(msgspec.Struct, kw_only=True):
    pdno: str = ""
    prdt_name: str = ""
    trad_dvsn_name: str = ""
    bfdy_buy_qty: str = ""
    bfdy_sll_qty: str = ""
    thdt_buyqty: str = ""
    thdt_sll_qty: str = ""
    hldg_qty: str = ""
    ord_psbl_qty: str = ""
    pchs_avg_pric: str = ""
    pchs_amt: str = ""
    prpr: str = ""
    evlu_amt: str = ""
    evlu_pfls_amt: str = ""
    evlu_pfls_rt: str = ""


class BalanceSummary(msgspec.Struct, kw_only=True):
    dnca_tot_amt: str = ""
    nxdy_excc_amt: str = ""
    prvs_rcdl_excc_amt: str = ""
    thdt_buy_amt: str = ""
    thdt_sll_amt: str = ""
    thdt_tlex_amt: str = ""
    scts_evlu_amt: str = ""
    tot_evlu_amt: str = ""
    nass_amt: str = ""
    pchs_amt_smtl_amt: str = ""
    evlu_amt_smtl_amt: str = ""
    evlu_pfls_smtl_amt: str = ""


class BalanceResponse(Paged, kw_only=True):
    output1: list[BalanceRow] = []
    output2: list[BalanceSummary] | BalanceSummary | None = None  # a list holding one object


class PsblOrderRequest(msgspec.Struct, kw_only=True):
    CANO: str
    ACNT_PRDT_CD: str
    PDNO: str = ""
    ORD_UNPR: str = ""
    ORD_DVSN: str = "01"
    CMA_EVLU_AMT_ICLD_YN: str = "N"
    OVRS_ICLD_YN: str = "N"


class PsblOrderOutput(msgspec.Struct, kw_only=True):
    ord_psbl_cash: str = ""
    ord_psbl_sbst: str = ""
    ruse_psbl_amt: str = ""
    psbl_qty_calc_unpr: str = ""
    nrcvb_buy_amt: str = ""
    nrcvb_buy_qty: str = ""
    max_buy_amt: str = ""
    max_buy_qty: str = ""


class PsblOrderResponse(Envelope, kw_only=True):
    output: PsblOrderOutput | None = None


class PsblSellRequest(msgspec.Struct, kw_only=True):
    CANO: str
    ACNT_PRDT_CD: str
    PDNO: str


class PsblSellOutput(msgspec.Struct, kw_only=True):
    pdno: str = ""
    prdt_name: str = ""
    buy_qty: str = ""
    sll_qty: str = ""
    cblc_qty: str = ""
    nsvg_qty: str = ""
    ord_psbl_qty: str = ""
    pchs_avg_pric: str = ""
    pchs_amt: str = ""
    now_pric: str = ""
    evlu_amt: str = ""
    evlu_pfls_amt: str = ""
    evlu_pfls_rt: str = ""


class PsblSellResponse(Envelope, kw_only=True):
    output: PsblSellOutput | None = None
    output1: PsblSellOutput | None = None  # documented name; examples use `output`


# --- quotations ------------------------------------------------------------------------------


class QuoteRequest(msgspec.Struct, kw_only=True):
    FID_COND_MRKT_DIV_CODE: str = "J"
    FID_INPUT_ISCD: str = ""


class PriceOutput(msgspec.Struct, kw_only=True):
    iscd_stat_cls_code: str = ""
    marg_rate: str = ""
    temp_stop_yn: str = ""
    stck_prpr: str = ""
    prdy_vrss: str = ""
    prdy_vrss_sign: str = ""
    prdy_ctrt: str = ""
    acml_tr_pbmn: str = ""
    acml_vol: str = ""
    stck_oprc: str = ""
    stck_hgpr: str = ""
    stck_lwpr: str = ""
    stck_mxpr: str = ""
    stck_llam: str = ""
    stck_sdpr: str = ""
    wghn_avrg_stck_prc: str = ""
    aspr_unit: str = ""
    lstn_stcn: str = ""
    hts_avls: str = ""
    per: str = ""
    pbr: str = ""
    eps: str = ""
    bps: str = ""
    d250_hgpr: str = ""
    d250_lwpr: str = ""
    stck_shrn_iscd: str = ""
    vi_cls_code: str = ""
    invt_caful_yn: str = ""
    mrkt_warn_cls_code: str = ""
    short_over_yn: str = ""
    sltr_yn: str = ""


class PriceResponse(Envelope, kw_only=True):
    output: PriceOutput | None = None


class AskingOutput1(msgspec.Struct, kw_only=True):
    aspr_acpt_hour: str = ""
    askp1: str = ""
    askp2: str = ""
    askp3: str = ""
    askp4: str = ""
    askp5: str = ""
    askp6: str = ""
    askp7: str = ""
    askp8: str = ""
    askp9: str = ""
    askp10: str = ""
    bidp1: str = ""
    bidp2: str = ""
    bidp3: str = ""
    bidp4: str = ""
    bidp5: str = ""
    bidp6: str = ""
    bidp7: str = ""
    bidp8: str = ""
    bidp9: str = ""
    bidp10: str = ""
    askp_rsqn1: str = ""
    askp_rsqn2: str = ""
    askp_rsqn3: str = ""
    askp_rsqn4: str = ""
    askp_rsqn5: str = ""
    askp_rsqn6: str = ""
    askp_rsqn7: str = ""
    askp_rsqn8: str = ""
    askp_rsqn9: str = ""
    askp_rsqn10: str = ""
    bidp_rsqn1: str = ""
    bidp_rsqn2: str = ""
    bidp_rsqn3: str = ""
    bidp_rsqn4: str = ""
    bidp_rsqn5: str = ""
    bidp_rsqn6: str = ""
    bidp_rsqn7: str = ""
    bidp_rsqn8: str = ""
    bidp_rsqn9: str = ""
    bidp_rsqn10: str = ""
    total_askp_rsqn: str = ""
    total_bidp_rsqn: str = ""
    new_mkop_cls_code: str = ""


class AskingOutput2(msgspec.Struct, kw_only=True):
    antc_mkop_cls_code: str = ""
    stck_prpr: str = ""
    stck_oprc: str = ""
    stck_hgpr: str = ""
    stck_lwpr: str = ""
    stck_sdpr: str = ""
    antc_cnpr: str = ""
    antc_cntg_vrss_sign: str = ""
    antc_cntg_vrss: str = ""
    antc_cntg_prdy_ctrt: str = ""
    antc_vol: str = ""
    stck_shrn_iscd: str = ""
    vi_cls_code: str = ""


class AskingPriceResponse(Envelope, kw_only=True):
    output1: AskingOutput1 | None = None
    output2: AskingOutput2 | None = None


class DailyChartRequest(msgspec.Struct, kw_only=True):
    FID_COND_MRKT_DIV_CODE: str = "J"
    FID_INPUT_ISCD: str = ""
    FID_INPUT_DATE_1: str = ""
    FID_INPUT_DATE_2: str = ""
    FID_PERIOD_DIV_CODE: str = "D"
    FID_ORG_ADJ_PRC: str = "0"


class ChartHeader(msgspec.Struct, kw_only=True):
    prdy_vrss: str = ""
    prdy_vrss_sign: str = ""
    prdy_ctrt: str = ""
    stck_prdy_clpr: str = ""
    acml_vol: str = ""
    acml_tr_pbmn: str = ""
    hts_kor_isnm: str = ""
    stck_prpr: str = ""
    stck_shrn_iscd: str = ""
    stck_mxpr: str = ""
    stck_llam: str = ""


class DailyBar(msgspec.Struct, kw_only=True):
    stck_bsop_date: str = ""
    stck_clpr: str = ""
    stck_oprc: str = ""
    stck_hgpr: str = ""
    stck_lwpr: str = ""
    acml_vol: str = ""
    acml_tr_pbmn: str = ""
    flng_cls_code: str = ""
    prtt_rate: str = ""
    mod_yn: str = ""
    prdy_vrss_sign: str = ""
    prdy_vrss: str = ""
    revl_issu_reas: str = ""


class DailyChartResponse(Envelope, kw_only=True):
    output1: ChartHeader | None = None
    output2: list[DailyBar] = []


class TimeChartRequest(msgspec.Struct, kw_only=True):
    FID_ETC_CLS_CODE: str = ""
    FID_COND_MRKT_DIV_CODE: str = "J"
    FID_INPUT_ISCD: str = ""
    FID_INPUT_HOUR_1: str = ""
    FID_PW_DATA_INCU_YN: str = "N"


class MinuteBar(msgspec.Struct, kw_only=True):
    stck_bsop_date: str = ""
    stck_cntg_hour: str = ""
    stck_prpr: str = ""
    stck_oprc: str = ""
    stck_hgpr: str = ""
    stck_lwpr: str = ""
    cntg_vol: str = ""
    acml_tr_pbmn: str = ""


class TimeChartResponse(Envelope, kw_only=True):
    output1: ChartHeader | None = None
    output2: list[MinuteBar] = []


class InvestorRow(msgspec.Struct, kw_only=True):
    stck_bsop_date: str = ""
    stck_clpr: str = ""
    prdy_vrss: str = ""
    prdy_vrss_sign: str = ""
    prsn_ntby_qty: str = ""
    frgn_ntby_qty: str = ""
    orgn_ntby_qty: str = ""
    prsn_ntby_tr_pbmn: str = ""
    frgn_ntby_tr_pbmn: str = ""
    orgn_ntby_tr_pbmn: str = ""
    prsn_shnu_vol: str = ""
    frgn_shnu_vol: str = ""
    orgn_shnu_vol: str = ""
    prsn_shnu_tr_pbmn: str = ""
    frgn_shnu_tr_pbmn: str = ""
    orgn_shnu_tr_pbmn: str = ""
    prsn_seln_vol: str = ""
    frgn_seln_vol: str = ""
    orgn_seln_vol: str = ""
    prsn_seln_tr_pbmn: str = ""
    frgn_seln_tr_pbmn: str = ""
    orgn_seln_tr_pbmn: str = ""


class InvestorResponse(Envelope, kw_only=True):
    output: list[InvestorRow] = []


class VolumeRankRequest(msgspec.Struct, kw_only=True):
    FID_COND_MRKT_DIV_CODE: str = "J"
    FID_COND_SCR_DIV_CODE: str = "20171"
    FID_INPUT_ISCD: str = "0000"
    FID_DIV_CLS_CODE: str = "0"
    FID_BLNG_CLS_CODE: str = "0"
    FID_TRGT_CLS_CODE: str = "111111111"
    FID_TRGT_EXLS_CLS_CODE: str = "000000"
    FID_INPUT_PRICE_1: str = ""
    FID_INPUT_PRICE_2: str = ""
    FID_VOL_CNT: str = ""
    FID_INPUT_DATE_1: str = ""


class VolumeRankRow(msgspec.Struct, kw_only=True):
    hts_kor_isnm: str = ""
    mksc_shrn_iscd: str = ""
    data_rank: str = ""
    stck_prpr: str = ""
    prdy_vrss_sign: str = ""
    prdy_vrss: str = ""
    prdy_ctrt: str = ""
    acml_vol: str = ""
    prdy_vol: str = ""
    lstn_stcn: str = ""
    avrg_vol: str = ""
    n_befr_clpr_vrss_prpr_rate: str = ""
    vol_inrt: str = ""
    vol_tnrt: str = ""
    nday_vol_tnrt: str = ""
    avrg_tr_pbmn: str = ""
    tr_pbmn_tnrt: str = ""
    nday_tr_pbmn_tnrt: str = ""
    acml_tr_pbmn: str = ""


class VolumeRankResponse(Envelope, kw_only=True):
    output: list[VolumeRankRow] = []


class HolidayRequest(msgspec.Struct, kw_only=True):
    """국내휴장일조회 (API.md 4.15): the days from BASS_DT on."""

    BASS_DT: str = ""
    CTX_AREA_NK: str = ""
    CTX_AREA_FK: str = ""


class HolidayRow(msgspec.Struct, kw_only=True):
    bass_dt: str = ""
    wday_dvsn_cd: str = ""
    bzdy_yn: str = ""  # business day
    tr_day_yn: str = ""  # trading day
    opnd_yn: str = ""  # the market opens: "can I order" (API.md 4.15)
    sttl_day_yn: str = ""  # settlement day


class HolidayResponse(Envelope, kw_only=True):
    output: list[HolidayRow] = []


def to_params(req: msgspec.Struct) -> dict[str, str]:
    """A request Struct as a str→str dict in field order (query string or JSON body)."""
    return {f: getattr(req, f) for f in req.__struct_fields__}
