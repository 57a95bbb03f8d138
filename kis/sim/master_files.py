"""KIS's stock master files as the twin publishes them (GET /common/master/kospi_code.mst.zip and
kosdaq_code.mst.zip), built from its stock list: each zip holds one cp949 file, a line per issue,
`line[0:9]` the short code (padded), `line[9:21]` the ISIN, then the Korean name and a fixed-width
tail (227 characters for KOSPI, 221 for KOSDAQ) that starts with the security group (ST stock, EF ETF,
EN ETN), the market-cap size class (1) and the index sector codes (large, medium, small: 4 each), as in
KIS's stocks_info/kis_kospi_code_mst.py. Written from that description, not from the client's parser
(the twin is the client's oracle)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable

from kis.sim.universe import StockInfo

FILES = {"KOSPI": "kospi_code.mst", "KOSDAQ": "kosdaq_code.mst"}
ZIPS = {f"{name}.zip": market for market, name in FILES.items()}  # what the download folder holds
TAIL = {"KOSPI": 227, "KOSDAQ": 221}
GROUPS = {"etf": "EF", "etn": "EN"}  # by the twin's kind; the rest are stocks (ST)


def master_lines(stocks: Iterable[StockInfo], market: str) -> bytes:
    """The .mst file of `market`; sectors become medium index sector codes numbered in name order."""
    rows = [s for s in stocks if s.market == market]
    sectors = {name: f"{i:04d}" for i, name in enumerate(sorted({s.sector for s in rows if s.sector}), 1)}
    lines = []
    for s in rows:
        tail = GROUPS.get(s.kind.value, "ST") + "1" + "0000" + sectors.get(s.sector, "0000")
        lines.append(f"{s.code:<9}{'KR7' + s.code + '000':<12}{s.name}" + tail.ljust(TAIL[market], "0"))
    return ("\n".join(lines) + "\n").encode("cp949")


def master_zip(stocks: Iterable[StockInfo], market: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(FILES[market], master_lines(stocks, market))
    return buf.getvalue()
