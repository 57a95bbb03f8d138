"""The twin's built-in stock master: a small universe with realistic base prices and fundamentals.

Also the gateway's fallback stock master (name lookup, kind, listed shares). Base prices are rough
levels of late 2025; fundamentals are plausible round figures, not data. EPS/BPS are integer KRW,
PER/PBR are decimal strings as KIS prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.krx import SecurityKind


@dataclass(frozen=True, slots=True)
class StockInfo:
    code: str
    name: str
    base_price: int  # previous close at twin start (KRW, on the grid)
    kind: SecurityKind
    market: str  # "KOSPI" / "KOSDAQ"
    sector: str  # 업종명 as shown in bstp_kor_isnm
    listed_shares: int
    eps: int
    bps: int
    par_value: int  # 액면가
    daily_volume: int  # typical shares traded per day (drives the synthetic flow)
    preferred: bool = False

    @property
    def per(self) -> str:
        return f"{self.base_price / self.eps:.2f}" if self.eps > 0 else "0.00"

    @property
    def pbr(self) -> str:
        return f"{self.base_price / self.bps:.2f}" if self.bps > 0 else "0.00"


_S = SecurityKind.STOCK
_E = SecurityKind.ETF

STOCKS: tuple[StockInfo, ...] = (
    StockInfo("005930", "삼성전자", 71_000, _S, "KOSPI", "전기,전자", 5_969_782_550, 3_450, 57_950, 100, 15_000_000),
    StockInfo(
        "005935", "삼성전자우", 58_600, _S, "KOSPI", "전기,전자", 822_886_700, 3_451, 57_950, 100, 1_500_000, True
    ),
    StockInfo("000660", "SK하이닉스", 198_000, _S, "KOSPI", "전기,전자", 728_002_365, 12_000, 90_000, 5_000, 3_500_000),
    StockInfo("035420", "NAVER", 215_000, _S, "KOSPI", "서비스업", 158_437_008, 10_800, 190_000, 100, 600_000),
    StockInfo("035720", "카카오", 41_500, _S, "KOSPI", "서비스업", 442_508_972, 600, 25_000, 100, 2_000_000),
    StockInfo("005380", "현대차", 218_500, _S, "KOSPI", "운수장비", 209_416_191, 52_000, 380_000, 5_000, 500_000),
    StockInfo("051910", "LG화학", 325_000, _S, "KOSPI", "화학", 70_592_343, 8_000, 440_000, 5_000, 250_000),
    StockInfo("006400", "삼성SDI", 240_000, _S, "KOSPI", "전기,전자", 68_764_530, 9_000, 390_000, 5_000, 300_000),
    StockInfo("068270", "셀트리온", 178_900, _S, "KOSPI", "의약품", 216_879_700, 2_900, 78_000, 1_000, 500_000),
    StockInfo("105560", "KB금융", 82_700, _S, "KOSPI", "금융업", 393_528_423, 12_700, 150_000, 5_000, 1_200_000),
    StockInfo("069500", "KODEX 200", 35_185, _E, "KOSPI", "ETF", 120_000_000, 0, 0, 0, 4_000_000),
    # A few more so that one socket can carry 40 registrations of distinct symbols.
    StockInfo("000270", "기아", 98_700, _S, "KOSPI", "운수장비", 397_672_632, 22_000, 150_000, 5_000, 900_000),
    StockInfo("005490", "POSCO홀딩스", 312_000, _S, "KOSPI", "철강금속", 84_571_230, 12_000, 720_000, 5_000, 250_000),
    StockInfo("012330", "현대모비스", 241_000, _S, "KOSPI", "운수장비", 92_795_779, 36_000, 480_000, 5_000, 200_000),
    StockInfo("028260", "삼성물산", 121_000, _S, "KOSPI", "유통업", 169_976_544, 13_000, 210_000, 100, 300_000),
    StockInfo("055550", "신한지주", 52_300, _S, "KOSPI", "금융업", 509_837_196, 8_700, 110_000, 5_000, 1_100_000),
    StockInfo("066570", "LG전자", 91_800, _S, "KOSPI", "전기,전자", 163_647_814, 4_000, 120_000, 5_000, 500_000),
    StockInfo("003550", "LG", 78_900, _S, "KOSPI", "서비스업", 157_300_000, 9_000, 170_000, 5_000, 200_000),
    StockInfo("017670", "SK텔레콤", 53_700, _S, "KOSPI", "통신업", 214_790_053, 5_200, 55_000, 100, 400_000),
    StockInfo("032830", "삼성생명", 85_600, _S, "KOSPI", "금융업", 200_000_000, 9_500, 190_000, 500, 300_000),
    StockInfo("247540", "에코프로비엠", 118_500, _S, "KOSDAQ", "일반전기전자", 97_801_344, 100, 12_000, 500, 900_000),
    StockInfo("086520", "에코프로", 63_400, _S, "KOSDAQ", "금융", 137_190_000, 0, 9_000, 100, 1_500_000),
    StockInfo("102110", "TIGER 200", 35_350, _E, "KOSPI", "ETF", 50_000_000, 0, 0, 0, 800_000),
    StockInfo("114800", "KODEX 인버스", 4_190, _E, "KOSPI", "ETF", 400_000_000, 0, 0, 0, 30_000_000),
)

BY_CODE: dict[str, StockInfo] = {s.code: s for s in STOCKS}

# The correlated pair: 005935 tracks 005930 with a mean-reverting log spread.
PAIR_COMMON = "005930"
PAIR_PREFERRED = "005935"


def get(code: str) -> StockInfo | None:
    return BY_CODE.get(normalise_code(code))


def normalise_code(code: str) -> str:
    """KIS accepts 6-digit codes, sometimes prefixed (`A005930`, `J`), ETNs with `Q`; keep 6 digits."""
    c = code.strip()
    if len(c) == 7 and c[0] in "AJQ":
        c = c[1:]
    return c


def codes() -> list[str]:
    return [s.code for s in STOCKS]
