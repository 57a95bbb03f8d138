"""Contract: KIS may answer inquire-price for an unknown code with rt_cd 0 and a zero-filled output
(python-kis reads `stck_prpr == "0"` as an unknown symbol, API.md §4.12; the twin's `unknown-quote zero`
fault). The adapter's quote() must not turn that into a quote with price 0: it raises BrokerNoData."""

from __future__ import annotations

from pathlib import Path

import pytest

from kis_twin import TwinProc, open_broker, run
from kis.port import BrokerNoData


def test_zero_filled_quote_of_an_unknown_code_is_no_data(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            await twin.admin("POST", "/admin/faults/unknown-quote", {"mode": "zero"})
            raw = await b.price("999999")  # the wire answer: rt_cd 0, stck_prpr "0"
            assert raw.rt_cd == "0" and raw.output is not None and raw.output.stck_prpr == "0"
            with pytest.raises(BrokerNoData):
                await b.quote("999999")
            good = await b.quote("005930")  # a known code still quotes
            assert good.last > 0

    run(body())
