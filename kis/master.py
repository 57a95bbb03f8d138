"""KIS stock master files (`kospi_code.mst`, `kosdaq_code.mst`): every listed issue with its group.

Format (cp949, fixed width, one issue per line): `line[0:9]` short code (padded), `line[9:21]` ISIN,
the Korean name up to a fixed tail (227 characters for KOSPI, 221 for KOSDAQ, counted on the decoded
string), whose first two characters are the security group: ST stock, EF ETF, EN ETN, BC fund,
RT REIT, FS/DR foreign stock or DR; then the market-cap size class (1) and the index sector codes
(지수업종 대/중/소분류, 4 each; KIS's stocks_info/kis_kospi_code_mst.py and kis_kosdaq_code_mst.py).
The sector a position counts in (account sector limits) is the medium class (중분류, e.g. 전기전자),
or the large class when the medium is blank, prefixed by the market: the two markets number their
index sectors apart."""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.krx_rules import Market, SecurityKind

TAIL = {"KOSPI": 227, "KOSDAQ": 221}
FILES = {"KOSPI": "kospi_code.mst", "KOSDAQ": "kosdaq_code.mst"}


class MasterEntry(msgspec.Struct, frozen=True):
    code: str
    isin: str
    name: str
    market: str
    group: str  # ST, EF, EN, BC, RT, ...
    sector: str = ""  # "KOSPI 0013" (index sector codes), the twin's sector name; "" unknown

    @property
    def kind(self) -> SecurityKind:
        """The KRX rules' kind: ETF and ETN (groups EF, EN) have the ETF grid and pay no sell tax."""
        return SecurityKind.ETF if self.group in ("EF", "EN") else SecurityKind.STOCK

    @property
    def board(self) -> Market:
        """The KRX rules' market (KOSPI for a market it does not know)."""
        return Market(self.market) if self.market in Market.__members__ else Market.KOSPI


class MasterError(ValueError):
    pass


def parse_master(data: bytes, market: str) -> dict[str, MasterEntry]:
    tail = TAIL[market]
    out: dict[str, MasterEntry] = {}
    for n, line in enumerate(data.decode("cp949").splitlines(), 1):
        if not line.strip():
            continue
        if len(line) <= 21 + tail:
            raise MasterError(f"{market} master line {n}: {len(line)} characters, too short for the layout")
        code = line[0:9].strip()
        rest = line[len(line) - tail :]
        out[code] = MasterEntry(
            code=code,
            isin=line[9:21].strip(),
            name=line[21 : len(line) - tail].strip(),
            market=market,
            group=rest[0:2],
            sector=sector_of(market, rest[3:7], rest[7:11]),
        )
    return out


def sector_of(market: str, large: str, medium: str) -> str:
    """The sector key of a master line: the medium index sector, else the large one ("" if neither)."""
    for part in (medium.strip(), large.strip()):
        if part and part.strip("0"):
            return f"{market} {part}"
    return ""


def load_master_dir(folder: str | Path) -> dict[str, MasterEntry]:
    """Both markets' files from a folder (either may be missing; none at all is an error)."""
    d = Path(folder)
    out: dict[str, MasterEntry] = {}
    found = False
    for market, name in FILES.items():
        p = d / name
        if p.exists():
            found = True
            out.update(parse_master(p.read_bytes(), market))
    if not found:
        raise MasterError(f"no {' or '.join(FILES.values())} in {d}")
    return out


class StockMaster(msgspec.Struct, frozen=True):
    """The codes the system may trade, with names: the KIS master files, or the twin's list."""

    entries: dict[str, MasterEntry]
    source: str  # the folder read, or "twin stock list"
    strict: bool  # True: a real KIS master (an unknown code is surely wrong)

    def __contains__(self, code: object) -> bool:
        return code in self.entries

    def name(self, code: str) -> str:
        e = self.entries.get(code)
        return e.name if e is not None else ""

    def sectors(self) -> dict[str, str]:
        """code → sector, for the codes whose sector is known."""
        return {c: e.sector for c, e in self.entries.items() if e.sector}

    def kinds(self) -> dict[str, SecurityKind]:
        """code → kind, for the codes that are not ordinary stocks (ETF/ETN: own grid, no sell tax)."""
        return {c: k for c, e in self.entries.items() if (k := e.kind) is not SecurityKind.STOCK}

    def boards(self) -> dict[str, Market]:
        """code → market, for the codes not on KOSPI (grids and taxes differ by market)."""
        return {c: m for c, e in self.entries.items() if (m := e.board) is not Market.KOSPI}


def twin_master() -> StockMaster:
    from kis.sim import universe  # the twin's built-in list (also the fallback master)

    groups = {"etf": "EF", "etn": "EN"}
    entries = {
        s.code: MasterEntry(
            code=s.code, isin="", name=s.name, market=s.market, group=groups.get(s.kind.value, "ST"), sector=s.sector
        )
        for s in universe.STOCKS
    }
    return StockMaster(entries=entries, source="twin stock list", strict=False)


def load_stock_master(master_dir: str | Path | None) -> StockMaster:
    """The one loader (gateway and `ktrader cards check`): the master files in `master_dir`, or the
    twin's stock list when no folder is given. Raises MasterError/OSError for a bad folder."""
    if not master_dir:
        return twin_master()
    return StockMaster(entries=load_master_dir(master_dir), source=str(master_dir), strict=True)
