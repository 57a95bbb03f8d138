"""The KIS reply codes (API.md §3.2, §5.3, §6, §8) and what each one means for the caller: the one
table that REST classification, the websocket session, start-up messages and `ktrader doctor` read.

A verdict says what the caller must do, not where the code came from:
- REJECTED / NOT_SUPPORTED / ACCOUNT: KIS said no; nothing was done (an order was not placed).
- SERVER: a KIS-side failure. A read may be retried; an order's outcome is UNKNOWN (the gateway
  behind the error may have forwarded it), resolved by inquiry, never resent.
- RATE_LIMITED, TOKEN_INVALID, TOKEN_THROTTLED: refused before processing: safe to retry as told.
- CREDENTIALS, WRONG_DOMAIN: the key/secret/environment is wrong; retrying will not help.
- WS_*: websocket control replies (OPSP codes).

Codes not in the table get a family verdict (`lookup`): an unknown `EGW` code is a server error
(doubt), an unknown `APBK`/`IGW`/`OPSQ`/8-digit code a business refusal, an unknown `OPSP` a
websocket error; any other unknown code is a refusal when KIS answered it with HTTP 2xx/4xx and a
server error (doubt) with HTTP 5xx.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Verdict(StrEnum):
    OK = "ok"
    NO_DATA = "no_data"  # an inquiry with nothing to report
    REJECTED = "rejected"  # a business refusal (APBK*, paper 40xxxxxx, ...): nothing done
    NOT_SUPPORTED = "not_supported"  # no such service / TR in this environment: nothing done
    ACCOUNT = "account"  # the account number is not one of this app key's: nothing done
    RATE_LIMITED = "rate_limited"  # EGW00201: not processed, retry after a pause
    TOKEN_INVALID = "token_invalid"  # expired/invalid token: not processed, refresh and retry once
    TOKEN_THROTTLED = "token_throttled"  # one token issuance per minute
    CREDENTIALS = "credentials"  # app key / secret refused
    WRONG_DOMAIN = "wrong_domain"  # paper key on the real domain or the reverse
    SERVER = "server"  # KIS-side error: reads retry, an order's outcome is unknown
    WS_SUBSCRIBED = "ws_subscribed"
    WS_UNSUBSCRIBED = "ws_unsubscribed"
    WS_ALREADY = "ws_already"  # ALREADY IN SUBSCRIBE: success
    WS_NOT_SUBSCRIBED = "ws_not_subscribed"  # unsubscribe of something not registered: success
    WS_CAP = "ws_cap"  # MAX SUBSCRIBE OVER
    WS_APPROVAL_INVALID = "ws_approval_invalid"
    WS_HTS_ID_REFUSED = "ws_hts_id_refused"
    WS_KEY_IN_USE = "ws_key_in_use"
    WS_BAD_TR = "ws_bad_tr"
    WS_ERROR = "ws_error"


class KisCode(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    verdict: Verdict
    meaning: str
    hint: str = ""  # what the operator should do, when it is theirs to do
    source: str = ""  # API.md section (or where the code was seen)


_CHECK_KEY = (
    "check KTRADER_KIS_APP_KEY / KTRADER_KIS_APP_SECRET (or credentials_file): copy them again from the KIS portal"
)

_TABLE: tuple[KisCode, ...] = (
    # success (API.md §3.2, §4)
    KisCode(code="MCA00000", verdict=Verdict.OK, meaning="정상처리 (quotation success)", source="§3.2"),
    KisCode(
        code="KIOK0510", verdict=Verdict.OK, meaning="조회가 완료되었습니다 (account inquiry success)", source="§3.2"
    ),
    KisCode(
        code="KIOK0420", verdict=Verdict.OK, meaning="정상적으로 조회되었습니다 (sellable qty success)", source="§3.2"
    ),
    KisCode(code="APBK0013", verdict=Verdict.OK, meaning="주문 전송 완료 (order sent)", source="§6.3"),
    KisCode(
        code="KIOK0560", verdict=Verdict.NO_DATA, meaning="조회할 내용이 없습니다 (nothing to report)", source="§3.2"
    ),
    # auth and gateway (API.md §6.1, §6.2)
    KisCode(
        code="EGW00123",
        verdict=Verdict.TOKEN_INVALID,
        meaning="expired token",
        hint="re-issued automatically",
        source="§6.2",
    ),
    KisCode(
        code="EGW00121",
        verdict=Verdict.TOKEN_INVALID,
        meaning="invalid token",
        hint="re-issued automatically",
        source="§6.2",
    ),
    KisCode(
        code="EGW00133",
        verdict=Verdict.TOKEN_THROTTLED,
        meaning="token issued less than a minute ago (one per minute)",
        hint="wait a minute; the cached token is reused on the next start",
        source="§6.2",
    ),
    KisCode(
        code="EGW02004",
        verdict=Verdict.WRONG_DOMAIN,
        meaning="app key of the other environment (paper key on the real domain, or real key on paper)",
        hint='the key is for the other environment: set broker.env = "paper" or "real" to match the key',
        source="§1.2, §6.2",
    ),
    KisCode(
        code="MCA00124",
        verdict=Verdict.NOT_SUPPORTED,
        meaning="해당 서비스를 찾을수 없습니다 (no such service)",
        hint="this API is not served in this environment (paper serves fewer TRs)",
        source="§1.2, §6.2",
    ),
    KisCode(
        code="EGW00201",
        verdict=Verdict.RATE_LIMITED,
        meaning="초당 거래건수를 초과하였습니다 (too many calls per second)",
        hint="another program may be using this app key's budget",
        source="§6.1",
    ),
    KisCode(code="EGW00215", verdict=Verdict.RATE_LIMITED, meaning="rate limited (UNCONFIRMED)", source="§6.1"),
    KisCode(
        code="EGW00002",
        verdict=Verdict.SERVER,
        meaning="KIS server error",
        hint="a KIS-side problem; retry later",
        source="issue 18 (KIS: server error)",
    ),
    # the twin's choices for codes the fact sheet does not pin (kis/sim/README.md)
    KisCode(
        code="EGW00103",
        verdict=Verdict.CREDENTIALS,
        meaning="유효하지 않은 AppKey (app key refused)",
        hint=_CHECK_KEY,
        source="twin (UNCONFIRMED)",
    ),
    KisCode(
        code="EGW00105",
        verdict=Verdict.CREDENTIALS,
        meaning="유효하지 않은 AppSecret (app secret refused)",
        hint=_CHECK_KEY,
        source="twin (UNCONFIRMED)",
    ),
    KisCode(
        code="EGW00500",
        verdict=Verdict.SERVER,
        meaning="시스템 오류 (system error)",
        hint="a KIS-side problem; retry later",
        source="twin (UNCONFIRMED)",
    ),
    KisCode(
        code="EGW02006",
        verdict=Verdict.NOT_SUPPORTED,
        meaning="모의투자 TR 이 아닙니다 (real-only TR on paper)",
        source="§1.2 (code UNCONFIRMED)",
    ),
    # business refusals (API.md §6.3): nothing placed
    KisCode(
        code="APBK0919",
        verdict=Verdict.REJECTED,
        meaning="market not open / 장운영일자 상이 / 주문가능금액 초과 (UNCONFIRMED single meaning)",
        source="§6.3",
    ),
    KisCode(code="APBK0656", verdict=Verdict.REJECTED, meaning="product not found", source="§6.3"),
    KisCode(code="APBK1664", verdict=Verdict.REJECTED, meaning="overseas market not open", source="§6.3"),
    KisCode(
        code="APBK0918",
        verdict=Verdict.REJECTED,
        meaning="order refused (python-kis falls back to US daytime order)",
        source="§6.3",
    ),
    KisCode(
        code="40100000",
        verdict=Verdict.REJECTED,
        meaning="모의투자 영업일이 아닙니다 (paper: not a trading day / hours)",
        source="§6.3, §7.5",
    ),
    KisCode(code="IGW00009", verdict=Verdict.NOT_SUPPORTED, meaning="paper refuses reservation orders", source="§6.3"),
    KisCode(
        code="OPSQ2000",
        verdict=Verdict.ACCOUNT,
        meaning="INVALID_CHECK_ACNO (account not valid for this app key)",
        hint="check KTRADER_KIS_ACCOUNT: CANO-ACNT_PRDT_CD of an account registered to this app key (paper and real "
        "accounts differ)",
        source="§3.2",
    ),
    # websocket control replies (API.md §5.3, §8)
    KisCode(code="OPSP0000", verdict=Verdict.WS_SUBSCRIBED, meaning="SUBSCRIBE SUCCESS", source="§5.3"),
    KisCode(code="OPSP0001", verdict=Verdict.WS_UNSUBSCRIBED, meaning="UNSUBSCRIBE SUCCESS", source="§5.3"),
    KisCode(code="OPSP0002", verdict=Verdict.WS_ALREADY, meaning="ALREADY IN SUBSCRIBE (success)", source="§5.3, §8.3"),
    KisCode(code="OPSP0003", verdict=Verdict.WS_NOT_SUBSCRIBED, meaning="UNSUBSCRIBE ERROR(not found!)", source="§5.3"),
    KisCode(code="OPSP0007", verdict=Verdict.WS_ERROR, meaning="websocket internal error", source="§5.3"),
    KisCode(
        code="OPSP0008",
        verdict=Verdict.WS_CAP,
        meaning="MAX SUBSCRIBE OVER (41 registrations per app key)",
        source="§5.3, §6.4",
    ),
    KisCode(
        code="OPSP0011",
        verdict=Verdict.WS_APPROVAL_INVALID,
        meaning="invalid approval key",
        hint="a new approval key is requested",
        source="§2.3, §5.3",
    ),
    KisCode(
        code="OPSP0017",
        verdict=Verdict.WS_HTS_ID_REFUSED,
        meaning="htsid가잘못되었습니다 (HTS id refused for the notice feed)",
        hint="check KTRADER_KIS_HTS_ID (or hts_id in credentials_file): the HTS login id exactly, same case, keep a "
        "leading '$'",
        source="§5.3, §8.1, §8.16",
    ),
    KisCode(code="OPSP8991", verdict=Verdict.WS_BAD_TR, meaning="invalid tr_id (UNCONFIRMED)", source="§5.3"),
    KisCode(
        code="OPSP8996",
        verdict=Verdict.WS_KEY_IN_USE,
        meaning="ALREADY IN USE appkey (one websocket per app key)",
        hint="another program (a second gateway, a script, python-kis) holds this app key's websocket: stop it; "
        "after an abnormal close KIS may keep the slot for a while",
        source="§5.1, §6.4, §8.2",
    ),
)

CODES: dict[str, KisCode] = {c.code: c for c in _TABLE}

# verdicts an order call may end with, grouped by what they prove about the order
PROVES_NOT_PLACED = frozenset(
    {
        Verdict.REJECTED,
        Verdict.NOT_SUPPORTED,
        Verdict.ACCOUNT,
        Verdict.RATE_LIMITED,
        Verdict.TOKEN_INVALID,
        Verdict.TOKEN_THROTTLED,
        Verdict.CREDENTIALS,
        Verdict.WRONG_DOMAIN,
    }
)


def codes_with(*verdicts: Verdict) -> frozenset[str]:
    return frozenset(c.code for c in _TABLE if c.verdict in verdicts)


def lookup(code: str, http_status: int = 200) -> KisCode:
    """The table's entry, or the family verdict of an unknown code (see the module doc)."""
    code = code.strip()
    known = CODES.get(code)
    if known is not None:
        return known
    if code.startswith("EGW"):
        # KIS's gateway answers most of its errors with HTTP 500; a 401/403 with a code not in the table (an IP not
        # registered for the key?) is the key's refusal, every call's (the session's, not one agent's order), and a
        # retry will not change it: not a server's bad moment
        verdict = Verdict.CREDENTIALS if http_status in (401, 403) else Verdict.SERVER
    elif code.startswith(("APBK", "IGW", "OPSQ", "KIOK")) or (len(code) == 8 and code.isdigit()):
        verdict = Verdict.REJECTED
    elif code.startswith("OPSP"):
        verdict = Verdict.WS_ERROR
    else:
        verdict = Verdict.SERVER if http_status >= 500 else Verdict.REJECTED
    return KisCode(code=code, verdict=verdict, meaning="not in the fact sheet's table", source="family rule")
