"""A first start that KIS refuses keeps no owner of the run folder: the corrected start (the hint's
broker.env, the account without its typo) is taken, not refused as another account's books. A folder
whose owner a start has proven is still refused to another environment or account, before any KIS call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from kis.credentials import Credentials
from kis.port import BrokerAuthError, BrokerRejected
from kis.startup import StartExit, StartupError, explain_failure
from server.gateway import Gateway
from server.store import OwnerMismatch, Store
from tests.fakes.broker import FakeBroker

ACCOUNT = "50123456-01"
PAPER_KEY = "PS" + "k" * 34


class KisLikeBroker(FakeBroker):
    """A FakeBroker that carries KIS credentials (what run_owner fingerprints) and, when `refusal` is
    set, fails its start as the KIS adapter does when KIS refuses the token or the account inquiry."""

    def __init__(self, account: str, refusal: BaseException | None = None) -> None:
        super().__init__(ref_price=70_000)
        self._creds = Credentials(PAPER_KEY, "s" * 180, account, "someone")
        self.refusal = refusal
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.refusal is not None:
            raise self.refusal
        await super().start()


def config(run: Path, env: BrokerEnv) -> GatewayConfig:
    return GatewayConfig(run_dir=str(run), broker=BrokerConfig(env=env), master_url="")  # no master download


def refused(env: BrokerEnv, code: str, message: str) -> StartupError:
    """The StartupError KIS's refusal becomes in the adapter (kis/startup.py explain_failure)."""
    exc = BrokerAuthError(message, code=code) if code.startswith("EGW") else BrokerRejected(message, code=code)
    err = explain_failure(exc, what=f"KIS {env.value} REST", env_name=env.value)
    assert err is not None and err.exit_code is StartExit.REFUSED
    return err


def owner_kept(run: Path) -> dict[str, str]:
    store = Store(run / "db" / "gateway.sqlite")
    try:
        return store.meta_prefix("owner.")
    finally:
        store.close()


async def runs(gw: Gateway, run: Path) -> None:
    """Start `gw`, wait for it to be ready (gateway.json), stop it."""
    task = asyncio.create_task(gw.run())
    for _ in range(500):
        if (run / "gateway.json").exists() or task.done():
            break
        await asyncio.sleep(0.02)
    assert not task.done(), task.exception()
    gw.stop()
    await asyncio.wait_for(task, 20)


@pytest.mark.parametrize(
    ("first_env", "first_account", "code", "message"),
    [
        # env = "real" with a paper key: KIS says EGW02004; the hint says set broker.env = "paper"
        (BrokerEnv.REAL, ACCOUNT, "EGW02004", "실전투자 appkey가 아닙니다."),
        # a mistyped account: KIS says OPSQ2000 on the account inquiry
        (BrokerEnv.PAPER, "50123457-01", "OPSQ2000", "INVALID_CHECK_ACNO"),
    ],
    ids=["paper-key-on-real", "mistyped-account"],
)
async def test_a_refused_first_start_keeps_no_owner_and_the_corrected_start_is_taken(
    tmp_path: Path, first_env: BrokerEnv, first_account: str, code: str, message: str
) -> None:
    run = tmp_path / "run"
    first = KisLikeBroker(first_account, refused(first_env, code, message))
    with pytest.raises(StartupError):
        await Gateway(config(run, first_env), first).run()
    assert first.starts == 1
    assert owner_kept(run) == {}  # nothing proved it: the folder holds no one's books

    # the operator follows the hint: env paper, the account as registered
    fixed = KisLikeBroker(ACCOUNT)
    await runs(Gateway(config(run, BrokerEnv.PAPER), fixed), run)
    assert fixed.starts == 1
    held = owner_kept(run)
    assert held["env"] == "paper" and held["account"] == "50******-01", held

    # now the folder's owner is proven: another environment or account is refused, before KIS is asked
    for env, account in ((BrokerEnv.REAL, ACCOUNT), (BrokerEnv.PAPER, "50999999-01")):
        other = KisLikeBroker(account)
        with pytest.raises(OwnerMismatch, match="holds the books of the paper account 50\\*+-01"):
            await Gateway(config(run, env), other).run()
        assert other.starts == 0
    assert owner_kept(run) == held


async def test_a_refused_start_on_a_proven_folder_keeps_its_owner(tmp_path: Path) -> None:
    """A new app key on the proven account that KIS refuses is not kept: the folder keeps the proven one."""
    run = tmp_path / "run"
    await runs(Gateway(config(run, BrokerEnv.PAPER), KisLikeBroker(ACCOUNT)), run)
    held = owner_kept(run)
    bad = KisLikeBroker(ACCOUNT, refused(BrokerEnv.PAPER, "EGW00103", "유효하지 않은 AppKey입니다."))
    bad._creds = Credentials("PS" + "x" * 34, "s" * 180, ACCOUNT, "someone")
    with pytest.raises(StartupError):
        await Gateway(config(run, BrokerEnv.PAPER), bad).run()
    assert owner_kept(run) == held


def test_check_owner_writes_nothing_and_claim_owner_still_keeps_the_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "db" / "gateway.sqlite")
    try:
        paper = {"env": "paper", "account": "50******-01", "account_id": "0123456789abcdef", "key_id": "k"}
        store.check_owner(paper, tmp_path)
        assert store.meta_prefix("owner.") == {}
        store.check_owner({"env": "real"}, tmp_path)  # nothing held: nothing to refuse
        store.claim_owner(paper, tmp_path)
        assert store.meta_prefix("owner.") == paper
        with pytest.raises(OwnerMismatch):
            store.check_owner({**paper, "env": "real"}, tmp_path)
    finally:
        store.close()
