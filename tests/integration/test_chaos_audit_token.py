"""The chaos campaign's audit client and the gateway use one KIS token (tools/chaos/campaign.py).

KIS answers one tokenP call per app key a minute (API.md §9: EGW00133, even for a call that would
return the same token). The campaign reads the twin over KIS REST just before it starts the gateway
and again next to it at the end: a token of its own would make the gateway wait out the minute. The
audit client shares the gateway's token cache (RUN_DIR/kis) instead, whichever of the two comes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from kis.adapter import KisBroker
from kis.credentials import credentials_env
from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig
from server.brokers import make_gateway_broker
from tools.chaos.campaign import audit_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(tick_interval=0, seed=37)) as tw:
        yield tw


@pytest.fixture(autouse=True)
def clean(twin: TwinThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    httpx.post(f"{twin.admin_url}/admin/faults/reset", timeout=10).raise_for_status()  # the minute too
    for k, v in credentials_env(twin.info).items():
        monkeypatch.setenv(k, v)
    yield
    httpx.post(f"{twin.admin_url}/admin/faults/reset", timeout=10).raise_for_status()


def gateway_broker(twin: TwinThread, run: Path) -> KisBroker:
    """The broker a gateway on `run` builds for this twin (server/brokers.py)."""
    cfg = GatewayConfig(
        run_dir=str(run), broker=BrokerConfig(env=BrokerEnv.SIM, rest_url=twin.rest_url, ws_url=twin.ws_url)
    )
    broker = make_gateway_broker(cfg)
    assert isinstance(broker, KisBroker)
    return broker


@pytest.mark.parametrize("first", ["audit", "gateway"])
def test_audit_and_gateway_take_one_token_within_the_minute(twin: TwinThread, tmp_path: Path, first: str) -> None:
    run = tmp_path / "run"

    async def go() -> None:
        audit, gateway = audit_broker(twin.info, run), gateway_broker(twin, run)
        try:
            assert audit.tokens.path == gateway.tokens.path  # one cache file for the app key
            one, other = (audit, gateway) if first == "audit" else (gateway, audit)
            token = await one.tokens.get()
            assert one.tokens.issued_count == 1
            assert await other.tokens.get() == token  # from the cache: no second tokenP call
            assert other.tokens.issued_count == 0
            assert (await other.price("005930")).output is not None  # and KIS takes it
        finally:
            await audit.close()
            await gateway.close()

    # a second tokenP call within the minute would be refused (EGW00133) and waited out (61 s)
    asyncio.run(asyncio.wait_for(go(), 30))
