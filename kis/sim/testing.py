"""Helpers to run and talk to the twin from synchronous code (tests, tools): a twin on its own thread and loop.

    with TwinThread(TwinConfig(tick_interval=0)) as tw:
        httpx.post(tw.rest_url + "/oauth2/tokenP", json={...})

Use `tw.run(fn)` to touch twin state from the test thread (runs `fn()` on the twin's loop).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from kis.sim.server import TwinServer
from kis.sim.twin import TwinConfig

R = TypeVar("R")


class TwinThread:
    def __init__(self, config: TwinConfig | None = None) -> None:
        self.config = config or TwinConfig(tick_interval=0)
        self.server: TwinServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kis-twin", daemon=True)
        self.info: dict[str, Any] = {}

    def __enter__(self) -> TwinThread:
        self._thread.start()

        async def boot() -> TwinServer:
            server = TwinServer(self.config)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(timeout=30)
        self.info = self.server.connection_info()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def run(self, fn: Callable[[], R]) -> R:
        async def call() -> R:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def __getattr__(self, name: str) -> Any:
        if name in (
            "rest_url",
            "paper_rest_url",
            "ws_url",
            "admin_url",
            "app_key",
            "app_secret",
            "account",
            "hts_id",
            "paper_app_key",
            "paper_app_secret",
            "paper_account",
        ):
            return self.info[name]
        raise AttributeError(name)


# ---------------------------------------------------------------- a bare KIS HTTP helper (plain httpx)

T = "/uapi/domestic-stock/v1/trading/"
Q = "/uapi/domestic-stock/v1/quotations/"


@dataclass
class Kis:
    base: str
    app_key: str
    app_secret: str
    account: str
    token: str = ""

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base, timeout=10)

    @property
    def cano(self) -> str:
        return self.account.split("-")[0]

    @property
    def prdt(self) -> str:
        return self.account.split("-")[1]

    def issue(self) -> httpx.Response:
        r = self.http.post(
            "/oauth2/tokenP",
            json={"grant_type": "client_credentials", "appkey": self.app_key, "appsecret": self.app_secret},
        )
        if r.status_code == 200:
            self.token = r.json()["access_token"]
        return r

    def approval(self) -> str:
        r = self.http.post(
            "/oauth2/Approval",
            json={"grant_type": "client_credentials", "appkey": self.app_key, "secretkey": self.app_secret},
        )
        return str(r.json()["approval_key"])

    def headers(self, tr_id: str, tr_cont: str = "") -> dict[str, str]:
        return {
            "content-type": "application/json; charset=utf-8",
            "authorization": f"Bearer {self.token}",
            "appkey": self.app_key,
            "appsecret": self.app_secret,
            "tr_id": tr_id,
            "custtype": "P",
            "tr_cont": tr_cont,
        }

    def get(self, path: str, tr_id: str, params: dict[str, str], tr_cont: str = "") -> httpx.Response:
        return self.http.get(path, headers=self.headers(tr_id, tr_cont), params=params)

    def post(self, path: str, tr_id: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, headers=self.headers(tr_id), content=json.dumps(body))

    def order(self, tr_id: str, code: str, qty: int, price: int, dvsn: str = "00") -> httpx.Response:
        return self.post(
            T + "order-cash",
            tr_id,
            {
                "CANO": self.cano,
                "ACNT_PRDT_CD": self.prdt,
                "PDNO": code,
                "SLL_TYPE": "",
                "ORD_DVSN": dvsn,
                "ORD_QTY": str(qty),
                "ORD_UNPR": str(price),
                "CNDT_PRIC": "",
                "EXCG_ID_DVSN_CD": "KRX",
            },
        )

    def rvsecncl(
        self, tr_id: str, orgn: str, kind: str, qty: int = 0, price: int = 0, all_qty: bool = True, dvsn: str = "00"
    ) -> httpx.Response:
        return self.post(
            T + "order-rvsecncl",
            tr_id,
            {
                "CANO": self.cano,
                "ACNT_PRDT_CD": self.prdt,
                "KRX_FWDG_ORD_ORGNO": "06010",
                "ORGN_ODNO": orgn,
                "ORD_DVSN": dvsn,
                "RVSE_CNCL_DVSN_CD": kind,
                "ORD_QTY": str(qty),
                "ORD_UNPR": str(price),
                "QTY_ALL_ORD_YN": "Y" if all_qty else "N",
                "EXCG_ID_DVSN_CD": "KRX",
            },
        )

    def daily_ccld(
        self, tr_id: str = "TTTC0081R", tr_cont: str = "", nk: str = "", fk: str = "", **extra: str
    ) -> httpx.Response:
        params = {
            "CANO": self.cano,
            "ACNT_PRDT_CD": self.prdt,
            "INQR_STRT_DT": "",
            "INQR_END_DT": "",
            "SLL_BUY_DVSN_CD": "00",
            "PDNO": "",
            "ORD_GNO_BRNO": "",
            "ODNO": "",
            "CCLD_DVSN": "00",
            "INQR_DVSN": "00",
            "INQR_DVSN_1": "",
            "INQR_DVSN_3": "00",
            "EXCG_ID_DVSN_CD": "KRX",
            "CTX_AREA_FK100": fk,
            "CTX_AREA_NK100": nk,
            **extra,
        }
        return self.get(T + "inquire-daily-ccld", tr_id, params, tr_cont)

    def balance(self, tr_id: str = "TTTC8434R") -> httpx.Response:
        return self.get(
            T + "inquire-balance",
            tr_id,
            {
                "CANO": self.cano,
                "ACNT_PRDT_CD": self.prdt,
                "AFHR_FLPR_YN": "N",
                "OFL_YN": "",
                "INQR_DVSN": "02",
                "UNPR_DVSN": "01",
                "FUND_STTL_ICLD_YN": "N",
                "FNCG_AMT_AUTO_RDPT_YN": "N",
                "PRCS_DVSN": "00",
                "CTX_AREA_FK100": "",
                "CTX_AREA_NK100": "",
            },
        )

    def price(self, code: str) -> httpx.Response:
        return self.get(Q + "inquire-price", "FHKST01010100", {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": code})


def ws_msg(approval: str, tr_id: str, tr_key: str, tr_type: str = "1") -> str:
    return json.dumps(
        {
            "header": {"approval_key": approval, "custtype": "P", "tr_type": tr_type, "content-type": "utf-8"},
            "body": {"input": {"tr_id": tr_id, "tr_key": tr_key}},
        }
    )
