"""Where a backtest's bars come from: a data folder/file (`--data`, CSV or parquet, daily or intraday) or
the gateway's own recordings (`--twin-replay`: `<run dir>/data/bars.sqlite`, written by server.barstore).

`--bars` names the interval the strategy gets. Data already at that interval is used as it is;
1-minute data is rolled up into a longer interval (5m, 15m, ...) the way the gateway builds its bars
(server.bars.aggregate); anything else is a clear error, never a silent resampling."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

from tools.backtest.data import DataError, Listing, Series, grid_label, load_codes

BARS = ("1d", "1m", "5m", "15m", "60m")  # common.schema.Bar intervals
STORE = Path("data") / "bars.sqlite"  # inside a run directory


def check_interval(bars: str) -> str:
    if bars not in BARS:
        raise DataError(f"--bars {bars}: expected one of {', '.join(BARS)}")
    return bars


def _as_interval(series: dict[str, Series], bars: str, where: str) -> dict[str, Series]:
    from server.bars import aggregate  # the gateway's own roll-up, so replayed 5m bars match live ones

    out: dict[str, Series] = {}
    for code, s in series.items():
        have = s.bars[0].interval if s.bars else bars
        if have == bars:
            out[code] = s
        elif have == "1m" and bars != "1d":
            out[code] = replace(s, bars=aggregate(s.bars, bars), starts=None)
        else:
            raise DataError(f"{where}: {code} has {have} bars, not {bars} (use --bars {have})")
    return out


def load_store(run_dir: Path, codes: list[str], bars: str, date_to: dt.date) -> dict[str, Series]:
    """The codes' bars recorded by the gateway in `run_dir`, up to `date_to` (warm-up included)."""
    path = run_dir / STORE
    if not path.is_file():
        raise DataError(f"{path}: no bar store (run the gateway first, or point --run-dir at a run directory)")
    import apsw

    from server.barstore import BarStore

    end = date_to.isoformat() + "~"  # "~" sorts after "THH:MM": the whole last day
    try:
        store = BarStore(path, readonly=True)
    except apsw.Error as e:
        raise DataError(f"{path}: cannot open the bar store: {e}") from None
    out: dict[str, Series] = {}
    try:
        for code in codes:
            got = store.bars(code, bars, end=end)
            if not got and bars != "1m" and bars != "1d":
                got = store.bars(code, "1m", end=end)  # rolled up below
            if not got:
                raise DataError(f"{path}: no {bars} bars recorded for {code} up to {date_to}")
            # the daily bars it stored (the broker's chart and the day cycle's): an intraday run's daily history
            daily = store.bars(code, "1d", end=date_to.isoformat()) if bars != "1d" else None
            out[code] = Series(code=code, bars=got, source=f"{path} ({code} {got[0].interval})", daily=daily or None)
    except apsw.Error as e:
        raise DataError(f"{path}: cannot read the bar store: {e}") from None
    finally:
        store.close()
    return _as_interval(out, bars, str(path))


def load_series(
    codes: list[str],
    bars: str,
    date_to: dt.date,
    data: Path | None = None,
    run_dir: Path | None = None,
    *,
    strict: bool = False,
    prices: str = "raw",
    listings: dict[str, Listing] | None = None,
) -> dict[str, Series]:
    """From `data` (a folder or file) or, when `run_dir` is given, from the gateway's bar store there.
    `listings`: each code's market, kind and sector where known (the rest: KOSPI, kind from the file's name,
    no sector)."""
    check_interval(bars)
    if run_dir is not None:
        got = load_store(run_dir, codes, bars, date_to)
        listings = listings or {}
        out = {}
        for c, s in got.items():
            lst = listings.get(c, Listing())
            # as a file's: as traded, or adjusted (a split's earlier bars the gateway rescaled, server/barstore.py)
            label = grid_label([b.start for b in s.bars], [b.close for b in s.bars], lst.kind, lst.market)
            out[c] = replace(s, market=lst.market, kind=lst.kind, sector=lst.sector, adjustment=label)
        return out
    if data is None:
        raise DataError("give --data PATH or --twin-replay")
    return _as_interval(
        load_codes(data, codes, date_to, strict=strict, prices=prices, listings=listings), bars, str(data)
    )
