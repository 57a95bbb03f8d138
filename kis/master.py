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

import asyncio
import datetime as dt
import hashlib
import io
import zipfile
import zlib
from pathlib import Path

import msgspec

from common.krx_rules import Market, SecurityKind
from common.private import private_dir, write_atomic
from kis.reference import normalise_code

TAIL = {"KOSPI": 227, "KOSDAQ": 221}
FILES = {"KOSPI": "kospi_code.mst", "KOSDAQ": "kosdaq_code.mst"}
# what KIS publishes in its download folder (GatewayConfig.master_url): each file zipped alone
ZIPS = {market: f"{name}.zip" for market, name in FILES.items()}
STAMP = "downloaded.json"  # beside a downloaded copy: the day it was fetched and from where


class MasterEntry(msgspec.Struct, frozen=True):
    code: str  # the key ktrader uses everywhere: 6 characters for a KRX short code (ETN 'Q' stripped)
    isin: str
    name: str
    market: str
    group: str  # ST, EF, EN, BC, RT, ...
    sector: str = ""  # "KOSPI 0013" (index sector codes), the twin's sector name; "" unknown
    # the code exactly as the master file spells it when that differs from `code` (ETNs: 'Q500061');
    # API.md says KIS's order PDNO, quote FID_INPUT_ISCD and websocket tr_key take ETNs in that form
    raw_code: str = ""

    @property
    def wire_code(self) -> str:
        """The code as KIS's own master spells it (what API.md says its order/quote endpoints take)."""
        return self.raw_code or self.code

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
        raw = line[0:9].strip()
        # ETNs are listed as 'Q500061': ktrader keys every code by the 6-character short code (the
        # wire's StockCode, volume-rank's normalise_code, the twin), so the master does too
        code = normalise_code(raw)  # (9-character fund codes 'F70100030' are kept as they are)
        rest = line[len(line) - tail :]
        out[code] = MasterEntry(
            code=code,
            raw_code=raw if raw != code else "",
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
    """Both markets' files from a folder (either may be missing; none at all, or none listing a code, is an
    error; a file not in KIS's layout too)."""
    d = Path(folder)
    out: dict[str, MasterEntry] = {}
    found = False
    for market, name in FILES.items():
        p = d / name
        if p.exists():
            found = True
            out.update(_checked(p.read_bytes(), market, str(p), empty_ok=True))
    if not found:
        raise MasterError(f"no {' or '.join(FILES.values())} in {d}")
    if not out:  # (empty files started a gateway with 0 codes, every order denied: a hunt)
        raise MasterError(f"{d}: its master files list no codes")
    return out


# KIS's security groups (the tail's first two characters): a file where most lines carry none of them is not in the
# layout this reader knows (a field added to the fixed-width tail shifted every field one place: every ETF read as a
# stock, no error: a hunt)
KNOWN_GROUPS = frozenset({"ST", "EF", "EN", "BC", "RT", "FS", "DR", "SR", "SW", "PF", "IF", "MF", "SC", "EW", "FE"})


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


def folder_master(run_dir: str | Path, master_dir: str | Path = "") -> StockMaster:
    """The master a run folder's cards are checked against (`cards approve`, a reload): the copy of KIS's files its
    gateway keeps (RUN/master, a paper or real account's), strict; else (a twin's folder, none downloaded yet, a copy
    that cannot be read) the twin's list, where an unknown code is a warning (approved against the twin's 24 codes on
    a real account's folder, a typo'd code went live with a warning: a hunt). `master_dir`: the gateway config's own
    folder of master files, which its gateway reads instead (MasterError/OSError when it cannot be read)."""
    if master_dir:
        return load_stock_master(master_dir)
    folder = Path(run_dir) / COPY_FOLDER
    copy = read_copy(folder)
    if copy is not None:
        try:
            return copy_master(folder, copy)
        except (MasterError, OSError, ValueError):
            pass
    return twin_master()


def copy_master(folder: Path, copy: MasterCopy) -> StockMaster:
    """The master of a downloaded copy (its stamp `copy`, in `folder`), strict: what its gateway judges codes by."""
    return StockMaster(entries=load_copy(folder, copy), source=f"KIS master of {copy.day} ({folder})", strict=True)


# ---- a copy of KIS's files, downloaded and kept current by the gateway ---------------------------

COPY_FOLDER = "master"  # under the run folder


class MasterCopy(msgspec.Struct, frozen=True):
    """What STAMP says of a downloaded copy."""

    at: str  # when it was downloaded, ISO 8601 in KST ("2026-12-04T08:05:12+09:00")
    url: str
    codes: int  # distinct codes of both files: a copy whose files do not add up to it is not the copy
    digest: str = ""  # sha256 of both files: the same list again (KIS not rebuilt yet) is told apart
    # when these very bytes were first downloaded (carried while the list stays the same): a list first seen before
    # the day's rebuild hour is the previous day's, whenever it was downloaded again ("": as `at`)
    first_seen: str = ""
    markets: dict[str, int] = {}  # codes per market's file: one file cut short is told apart ({}: not kept)

    @property
    def seen_since(self) -> str:
        return self.first_seen or self.at

    @property
    def day(self) -> str:
        return self.at[:10]


def read_copy(folder: Path) -> MasterCopy | None:
    """The stamp of the copy in `folder` (None: no complete copy there)."""
    try:
        stamp = msgspec.json.decode((folder / STAMP).read_bytes(), type=MasterCopy)
    except (OSError, msgspec.DecodeError):
        return None
    return stamp if all((folder / name).exists() for name in FILES.values()) else None


def load_copy(folder: Path, copy: MasterCopy) -> dict[str, MasterEntry]:
    """The copy's entries, checked against its stamp: both markets present, as many codes as it
    says (a file cut short by a crash, or replaced by hand, is not taken for the copy)."""
    entries: dict[str, MasterEntry] = {}
    for market, name in FILES.items():
        entries.update(_checked((folder / name).read_bytes(), market, str(folder / name)))
    if len(entries) != copy.codes:
        raise MasterError(f"the copy in {folder} has {len(entries)} codes, its stamp says {copy.codes}")
    return entries


def unzip_master(data: bytes, market: str) -> bytes:
    """The .mst file inside KIS's zip of `market` (MasterError for anything else)."""
    want = FILES[market]
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = {Path(n).name: n for n in z.namelist()}
            if want not in names:
                raise MasterError(f"{ZIPS[market]} holds no {want} (it has {', '.join(sorted(names)) or 'nothing'})")
            return z.read(names[want])
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as e:
        # a page in place of the zip, a truncated or corrupt archive, an unknown compression
        raise MasterError(f"{ZIPS[market]} is not a readable zip file ({len(data)} bytes: {e})") from None


def _checked(raw: bytes, market: str, where: str, empty_ok: bool = False) -> dict[str, MasterEntry]:
    """parse_master, where bytes that are not KIS's layout (damaged, replaced by hand, a page in place
    of the file, a layout KIS changed) or list nothing (an empty placeholder must never pass for a list) are a
    MasterError."""
    try:
        got = parse_master(raw, market)
    except UnicodeDecodeError as e:
        raise MasterError(f"{where} is not KIS's master layout ({e})") from None
    if not got:
        if empty_ok:
            return got
        raise MasterError(f"{where} lists no codes")
    odd = sum(1 for e in got.values() if e.group not in KNOWN_GROUPS)
    if odd * 10 > len(got):
        seen = sorted({e.group for e in got.values() if e.group not in KNOWN_GROUPS})[:5]
        raise MasterError(
            f"{where} is not in the master layout this ktrader reads: {odd} of {len(got)} lines carry no known "
            f"security group ({', '.join(repr(g) for g in seen)}): KIS changed the file's layout? (the copy in use "
            "stays; a newer ktrader reads the new one)"
        )
    return got


async def download_master(
    base_url: str, folder: Path, at: dt.datetime, *, timeout_s: float = 30.0, previous: MasterCopy | None = None
) -> MasterCopy:
    """Both markets' files from KIS's download folder into `folder`, replacing the copy there only
    when both arrived whole, parse, and each list at least half the codes of the `previous` copy's file (a list cut
    short at KIS's end is refused: each file, one cut short hid behind the other's count: a hunt); the copy carries
    when its bytes were first seen (`previous`'s when they are the same); MasterError says why not, and the
    old copy stays. Cancellable (a gateway stopping, or a standby taking over, never waits for it);
    `timeout_s` bounds the whole download."""
    import httpx  # only the gateway and the doctor download; `cards check` and the backtester read files

    def parse(url: str, data: bytes, market: str) -> tuple[bytes, dict[str, MasterEntry]]:
        raw = unzip_master(data, market)
        return raw, _checked(raw, market, url)

    async def fetch(client: httpx.AsyncClient, market: str) -> tuple[bytes, dict[str, MasterEntry]]:
        url = f"{base_url.rstrip('/')}/{ZIPS[market]}"
        r = await client.get(url)
        if r.status_code != 200:
            raise MasterError(f"{url}: HTTP {r.status_code}")
        return await asyncio.to_thread(parse, url, r.content, market)  # parsing: off the event loop

    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client:
                got = {market: await fetch(client, market) for market in ZIPS}
    except MasterError:
        raise
    except TimeoutError:
        raise MasterError(f"{base_url}: no complete answer within {timeout_s:.0f}s") from None
    except Exception as e:  # the network's, a malformed master_url's: a failed download all the same
        raise MasterError(f"{base_url}: {type(e).__name__}: {e or 'no answer'}") from None
    raws = {market: raw for market, (raw, _) in got.items()}
    codes = len({code for _, entries in got.values() for code in entries})  # once: a code may be in both
    markets = {market: len(entries) for market, (_, entries) in got.items()}
    before = previous.markets if previous is not None and previous.markets else {}
    for market, n in markets.items():  # listings change by a handful a day, never by half
        if n * 2 < before.get(market, 0):
            raise MasterError(
                f"{base_url}: only {n} {market} codes where the copy has {before[market]}: a truncated list?"
            )
    if previous is not None and codes * 2 < previous.codes:
        raise MasterError(f"{base_url}: only {codes} codes where the copy has {previous.codes}: a truncated list?")

    def write() -> None:
        private_dir(folder)
        (folder / STAMP).unlink(missing_ok=True)  # no stamp while the files change: never a mixed copy
        for market, raw in raws.items():
            write_atomic(folder / FILES[market], raw)
        write_atomic(folder / STAMP, msgspec.json.encode(copy))  # last: a copy without its stamp is incomplete

    digest = hashlib.sha256(b"".join(raws[m] for m in sorted(raws))).hexdigest()
    stamp = at.isoformat(timespec="seconds")
    same = previous is not None and previous.digest == digest and previous.url == base_url
    first_seen = previous.seen_since if same and previous is not None else stamp
    copy = MasterCopy(at=stamp, url=base_url, codes=codes, digest=digest, first_seen=first_seen, markets=markets)
    await asyncio.to_thread(write)
    return copy
