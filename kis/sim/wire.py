"""KIS wire vocabulary the twin emits: messages, error codes, realtime field layouts, frame helpers.

Field names and their order are copied from shared/kis/API.md (§4, §5). Codes or texts that API.md
does not pin down are marked UNCONFIRMED here and in kis/sim/README.md.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# --------------------------------------------------------------------------------------------- REST


@dataclass(frozen=True, slots=True)
class KisError(Exception):
    """A KIS-style error answer: HTTP status + rt_cd/msg_cd/msg1."""

    msg_cd: str
    msg1: str
    http_status: int = 500
    rt_cd: str = "1"

    def body(self) -> dict[str, str]:
        return {"rt_cd": self.rt_cd, "msg_cd": self.msg_cd, "msg1": self.msg1}


class OAuthError(Exception):
    """An /oauth2 error: KIS answers these in a different shape ({error_code, error_description})."""

    def __init__(self, code: str, description: str, http_status: int = 403) -> None:
        super().__init__(f"{code} {description}")
        self.code = code
        self.description = description
        self.http_status = http_status


# Documented (API.md §6.2, §6.1, §1.2).
E_TOKEN_EXPIRED = KisError("EGW00123", "기간이 만료된 token 입니다.")
E_TOKEN_INVALID = KisError("EGW00121", "유효하지 않은 token 입니다")  # wording UNCONFIRMED
E_RATE = KisError("EGW00201", "초당 거래건수를 초과하였습니다.")
E_PAPER_KEY_ON_REAL = KisError("EGW02004", "실전투자 도메인은 모의투자 앱키로 호출하실 수 없습니다.")
E_NOT_PAPER_TR = KisError("EGW02006", "모의투자 TR 이 아닙니다.")  # msg_cd UNCONFIRMED (text documented)
E_NO_SERVICE = KisError("MCA00124", "해당 서비스를 찾을수 없습니다.", http_status=404)  # status UNCONFIRMED
TOKEN_THROTTLE = ("EGW00133", "접근토큰발급 잠시후 다시 시도하세요(1분당 1회)")

# Twin choices (UNCONFIRMED codes; the texts are the twin's own).
E_REAL_KEY_ON_PAPER = KisError("EGW02004", "모의투자 도메인은 실전투자 앱키로 호출하실 수 없습니다.")
E_BAD_APPKEY = KisError("EGW00103", "유효하지 않은 AppKey입니다.")
E_BAD_APPSECRET = KisError("EGW00105", "유효하지 않은 AppSecret입니다.")
E_BAD_TR_ID = KisError("EGW00203", "TR_ID가 올바르지 않습니다.")  # UNCONFIRMED
E_INJECTED_500 = KisError("EGW00500", "일시적인 오류가 발생했습니다.")  # fault injection only

OK_ORDER = ("APBK0013", "주문 전송 완료 되었습니다.")
OK_QUERY = ("MCA00000", "정상처리 되었습니다.")
OK_BALANCE = ("KIOK0000", "조회가 완료되었습니다")  # UNCONFIRMED text
OK_CCLD = ("KIOK0510", "조회가 완료되었습니다")  # code from the XLSX example, text UNCONFIRMED
OK_PSBL_SELL = ("KIOK0420", "조회가 완료되었습니다")


def reject(msg_cd: str, msg1: str) -> KisError:
    """A business rejection: HTTP 200 with rt_cd 1 (API.md §3.2: usual for APBK*)."""
    return KisError(msg_cd, msg1, http_status=200)


def bad_input(field: str) -> KisError:
    # KIS answers malformed input with OPSQ-style messages; exact code UNCONFIRMED.
    return KisError("OPSQ2002", f"ERROR : INPUT_FIELD_NAME {field}", http_status=500, rt_cd="2")


# ------------------------------------------------------------------------------------ websocket

H0STCNT0_FIELDS: tuple[str, ...] = (
    "MKSC_SHRN_ISCD",
    "STCK_CNTG_HOUR",
    "STCK_PRPR",
    "PRDY_VRSS_SIGN",
    "PRDY_VRSS",
    "PRDY_CTRT",
    "WGHN_AVRG_STCK_PRC",
    "STCK_OPRC",
    "STCK_HGPR",
    "STCK_LWPR",
    "ASKP1",
    "BIDP1",
    "CNTG_VOL",
    "ACML_VOL",
    "ACML_TR_PBMN",
    "SELN_CNTG_CSNU",
    "SHNU_CNTG_CSNU",
    "NTBY_CNTG_CSNU",
    "CTTR",
    "SELN_CNTG_SMTN",
    "SHNU_CNTG_SMTN",
    "CCLD_DVSN",
    "SHNU_RATE",
    "PRDY_VOL_VRSS_ACML_VOL_RATE",
    "OPRC_HOUR",
    "OPRC_VRSS_PRPR_SIGN",
    "OPRC_VRSS_PRPR",
    "HGPR_HOUR",
    "HGPR_VRSS_PRPR_SIGN",
    "HGPR_VRSS_PRPR",
    "LWPR_HOUR",
    "LWPR_VRSS_PRPR_SIGN",
    "LWPR_VRSS_PRPR",
    "BSOP_DATE",
    "NEW_MKOP_CLS_CODE",
    "TRHT_YN",
    "ASKP_RSQN1",
    "BIDP_RSQN1",
    "TOTAL_ASKP_RSQN",
    "TOTAL_BIDP_RSQN",
    "VOL_TNRT",
    "PRDY_SMNS_HOUR_ACML_VOL",
    "PRDY_SMNS_HOUR_ACML_VOL_RATE",
    "HOUR_CLS_CODE",
    "MRKT_TRTM_CLS_CODE",
    "VI_STND_PRC",
)
assert len(H0STCNT0_FIELDS) == 46

H0STASP0_FIELDS: tuple[str, ...] = (
    ("MKSC_SHRN_ISCD", "BSOP_HOUR", "HOUR_CLS_CODE")
    + tuple(f"ASKP{i}" for i in range(1, 11))
    + tuple(f"BIDP{i}" for i in range(1, 11))
    + tuple(f"ASKP_RSQN{i}" for i in range(1, 11))
    + tuple(f"BIDP_RSQN{i}" for i in range(1, 11))
    + (
        "TOTAL_ASKP_RSQN",
        "TOTAL_BIDP_RSQN",
        "OVTM_TOTAL_ASKP_RSQN",
        "OVTM_TOTAL_BIDP_RSQN",
        "ANTC_CNPR",
        "ANTC_CNQN",
        "ANTC_VOL",
        "ANTC_CNTG_VRSS",
        "ANTC_CNTG_VRSS_SIGN",
        "ANTC_CNTG_PRDY_CTRT",
        "ACML_VOL",
        "TOTAL_ASKP_RSQN_ICDC",
        "TOTAL_BIDP_RSQN_ICDC",
        "OVTM_TOTAL_ASKP_ICDC",
        "OVTM_TOTAL_BIDP_ICDC",
        "STCK_DEAL_CLS_CODE",
    )
)
assert len(H0STASP0_FIELDS) == 59

NOTICE_FIELDS: tuple[str, ...] = (
    "CUST_ID",
    "ACNT_NO",
    "ODER_NO",
    "OODER_NO",
    "SELN_BYOV_CLS",
    "RCTF_CLS",
    "ODER_KIND",
    "ODER_COND",
    "STCK_SHRN_ISCD",
    "CNTG_QTY",
    "CNTG_UNPR",
    "STCK_CNTG_HOUR",
    "RFUS_YN",
    "CNTG_YN",
    "ACPT_YN",
    "BRNC_NO",
    "ODER_QTY",
    "ACNT_NAME",
    "ORD_COND_PRC",
    "ORD_EXG_GB",
    "POPUP_YN",
    "FILLER",
    "CRDT_CLS",
    "CRDT_LOAN_DATE",
    "CNTG_ISNM40",
    "ODER_PRC",
)
assert len(NOTICE_FIELDS) == 26

# Legacy 23-field layout: indices 0-17 identical, then these five.
NOTICE_FIELDS_LEGACY: tuple[str, ...] = NOTICE_FIELDS[:18] + (
    "CNTG_ISNM",
    "CRDT_CLS",
    "CRDT_LOAN_DATE",
    "CNTG_ISNM40",
    "ODER_PRC",
)
assert len(NOTICE_FIELDS_LEGACY) == 23

TR_PRICE = "H0STCNT0"
TR_BOOK = "H0STASP0"
TR_NOTICE_REAL = "H0STCNI0"
TR_NOTICE_PAPER = "H0STCNI9"
# Overseas fill notices (official sample overseas_stock/ccnl_notice): registered like the domestic
# ones (HTS id, encrypted ack) and never sent: the twin's accounts hold no overseas orders.
TR_OVERSEAS_NOTICE_REAL = "H0GSCNI0"
TR_OVERSEAS_NOTICE_PAPER = "H0GSCNI9"
MAX_REGISTRATIONS = 41


def data_frame(tr_id: str, records: list[list[str]], encrypted: bool = False) -> str:
    """`0|TR|NNN|f^f^...` — several records are concatenated with `^` (API.md §5.5)."""
    payload = "^".join("^".join(r) for r in records)
    return f"{'1' if encrypted else '0'}|{tr_id}|{len(records):03d}|{payload}"


def random_key_iv() -> tuple[str, str]:
    """A per-session AES key (32 ASCII chars) and iv (16 ASCII chars), as the subscribe ack gives them."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    raw = os.urandom(48)
    chars = "".join(alphabet[b % len(alphabet)] for b in raw)
    return chars[:32], chars[32:]


def aes_encrypt(plain: str, key: str, iv: str) -> str:
    padder = padding.PKCS7(128).padder()
    data = padder.update(plain.encode("utf-8")) + padder.finalize()
    enc = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")


def aes_decrypt(b64: str, key: str, iv: str) -> str:
    dec = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).decryptor()
    data = dec.update(base64.b64decode(b64)) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(data) + unpadder.finalize()).decode("utf-8")


def control(
    tr_id: str,
    tr_key: str,
    rt_cd: str,
    msg_cd: str,
    msg1: str,
    *,
    encrypt: str = "N",
    key_iv: tuple[str, str] | None = None,
) -> dict[str, object]:
    body: dict[str, object] = {"rt_cd": rt_cd, "msg_cd": msg_cd, "msg1": msg1}
    if key_iv is not None:
        body["output"] = {"iv": key_iv[1], "key": key_iv[0]}
    return {"header": {"tr_id": tr_id, "tr_key": tr_key, "encrypt": encrypt}, "body": body}


def sign_code(diff: int, price: int, upper: int, lower: int) -> str:
    """1 상한, 2 상승, 3 보합, 4 하한, 5 하락."""
    if price >= upper:
        return "1"
    if price <= lower:
        return "4"
    if diff > 0:
        return "2"
    if diff < 0:
        return "5"
    return "3"


def pct(num: int, den: int, places: int = 2) -> str:
    if den == 0:
        return f"{0:.{places}f}"
    return f"{num * 100 / den:.{places}f}"
