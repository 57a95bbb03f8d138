"""The twin can suspend trading in a code (거래정지), as KRX does for minutes or weeks: POST /admin/halt
{"code", "halted"}. While halted, KIS refuses the code's orders, nothing prints, and inquire-price says so
(temp_stop_yn Y, iscd_stat_cls_code 58), which the gateway reads as PriceQuote.halted. In history mode a
driven code with no prints that day (the data's V == 0) is reported halted the same way."""

from __future__ import annotations

import msgspec
import httpx

from kis import reference, wire
from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig

CODE = "005930"


def _quote(kis: Kis) -> tuple[wire.PriceOutput, bool]:
    out = msgspec.json.decode(kis.price(CODE).content, type=wire.PriceResponse).output
    assert out is not None
    return out, reference.price_quote(CODE, out).halted


def test_a_halted_code_refuses_orders_prints_nothing_and_says_so() -> None:
    with TwinThread(TwinConfig(seed=11, tick_interval=0, rate_real=10_000)) as twin:
        admin = httpx.Client(base_url=twin.admin_url, timeout=10)
        kis = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
        assert kis.issue().status_code == 200
        out, halted = _quote(kis)
        assert (out.temp_stop_yn, out.iscd_stat_cls_code, halted) == ("N", "55", False)
        bid = admin.get(f"/admin/book/{CODE}").json()["bids"][0][0]
        assert admin.post("/admin/halt", json={"code": CODE, "halted": True}).json() == {"code": CODE, "halted": True}
        out, halted = _quote(kis)
        assert (out.temp_stop_yn, out.iscd_stat_cls_code, halted) == ("Y", "58", True)
        r = kis.order("TTTC0012U", CODE, 10, bid).json()
        assert r["rt_cd"] != "0" and r["msg_cd"] == "APBK0659", r
        last = admin.get(f"/admin/book/{CODE}").json()
        admin.post("/admin/market/step", json={"n": 50, "codes": [CODE]}).raise_for_status()
        assert admin.get(f"/admin/book/{CODE}").json() == last  # nothing moves while halted
        admin.post("/admin/halt", json={"code": CODE, "halted": False}).raise_for_status()
        assert _quote(kis)[1] is False
        r = kis.order("TTTC0012U", CODE, 10, bid).json()
        assert r["rt_cd"] == "0", r
        assert admin.post("/admin/halt", json={"code": "999999"}).status_code == 400
