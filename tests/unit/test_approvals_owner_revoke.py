"""Approvals belong to one environment and account, and go when the operator takes them back.

1. Cards the twin's first start approved (or `ktrader demo` approved) stayed approved after `ktrader
   reset`, so they traded on the paper or real account the folder served next: an approval now records
   its owner (env and account, as the store's claim_owner), the gateway honours only its own owner's,
   and `ktrader reset` archives run/keys/approved.json.
2. `ktrader keys revoke ID` was undone at the next gateway start (a fresh credential for every approved
   agent): revoke withdraws the approval too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from common import approvals, credentials
from common.config import AgentCard, BrokerConfig, BrokerEnv, GatewayConfig, RiskLimits, TrustConfig
from common.errors import ErrorCode
from common.schema import Error, HeaderFactory, Register
from kis.credentials import Credentials
from server.core import run_owner
from server.gateway import Gateway
from tests.fakes.broker import FakeBroker
from tools.ops.keys import keys_app
from tools.ops.reset import archive_run_dir

ACCOUNT = "50123456-01"


def card(agent: str = "alpha") -> AgentCard:
    return AgentCard(
        id=agent, name=agent, strategy="x:Y", codes=["005930"], budget=1_000_000, risk=RiskLimits(max_order_value=1)
    )


@pytest.fixture
def cards_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "alpha.toml").write_text(
        'id = "alpha"\nname = "alpha"\nstrategy = "x:Y"\ncodes = ["005930"]\nbudget = 1000000\n'
        "[risk]\nmax_order_value = 1\n"
    )
    return folder


class Gateways:
    """Gateways on one run folder, each closed at the end; `_trust` is what a start runs after the store
    accepted the folder (server/gateway.py run)."""

    def __init__(self, run: Path, cards: Path) -> None:
        self.run, self.cards = run, cards
        self.open: list[Gateway] = []

    def start(self, env: BrokerEnv, account: str = ACCOUNT, app_key: str = "k" * 36, refused: bool = False) -> Gateway:
        """`refused`: KIS refuses the broker's start (run() then never binds the approvals to the owner)."""
        cfg = GatewayConfig(
            run_dir=str(self.run), broker=BrokerConfig(env=env), trust=TrustConfig(cards_dir=str(self.cards))
        )
        broker = FakeBroker(ref_price=70_000)
        if env is not BrokerEnv.SIM:  # what server/core.run_owner reads of a KIS broker
            broker._creds = Credentials(app_key, "s" * 180, account, "hts")  # type: ignore[attr-defined]
        gw = Gateway(cfg, broker)
        self.open.append(gw)
        gw._trust()
        if not refused:  # what run() does once broker.start() proved the owner
            gw._bind_approvals(run_owner(cfg, broker, self.run))
        return gw

    def stop(self, gw: Gateway) -> None:
        gw._close_stores()
        self.open.remove(gw)


@pytest.fixture
def gateways(tmp_path: Path, cards_dir: Path) -> Iterator[Gateways]:
    g = Gateways(tmp_path / "run", cards_dir)
    yield g
    for gw in list(g.open):
        g.stop(gw)


def test_a_start_kis_refuses_binds_no_approval_to_its_owner(gateways: Gateways) -> None:
    """Cards approved before the first start stay unbound when KIS refuses that start (a paper key with
    env = "real"): the corrected paper start binds them to the paper account and they trade there."""
    c = card("alpha")
    approvals.approve(gateways.run, [c], by="operator")
    gw = gateways.start(BrokerEnv.REAL, refused=True)
    gateways.stop(gw)
    assert approvals.load(gateways.run).cards["alpha"].owner is None  # nothing proven, nothing bound
    gw = gateways.start(BrokerEnv.PAPER)
    assert gw.approved.get("alpha") is not None
    assert approvals.load(gateways.run).cards["alpha"].owner == run_owner(gw.cfg, gw.broker, gateways.run)


def register(gw: Gateway, c: AgentCard) -> object:
    """The agent's Register as the gateway answers it (a refusal; an accepted one needs the event loop)."""
    return gw.sessions.register(b"route", Register(h=HeaderFactory(c.id)(), card=c, pid=1, host="h"))


def test_the_twins_first_start_approvals_do_not_trade_on_a_paper_account(
    gateways: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    sim = gateways.start(BrokerEnv.SIM)
    assert sim.approved.get("alpha") is not None  # the twin's agents register (their card approved for it)
    gateways.stop(sim)
    credentials.revoke(gateways.run, "alpha")  # to see whether the paper start issues it again
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        paper = gateways.start(BrokerEnv.PAPER)
        assert paper.approved.get("alpha") is None
        refused = register(paper, card())
    assert isinstance(refused, Error) and refused.code is ErrorCode.NOT_APPROVED
    # the agent is told why (it said only "no approved card")
    assert "approved for the KIS twin (env sim)" in refused.message and "paper account" in refused.message
    assert not credentials.credential_path(gateways.run, "alpha").exists()  # no credential for it either
    [a] = approvals.load(gateways.run).cards.values()
    assert a.owner == {"env": "sim"}  # what it was approved for
    lines = [r.getMessage() for r in caplog.records]
    told = [m for m in lines if m.startswith("agent alpha refused")]
    assert len(told) == 1 and "the KIS twin (env sim)" in told[0] and "paper account 50******-01" in told[0]
    assert "ktrader cards approve --run-dir" in told[0] and "\n" not in told[0]
    assert any("no card is approved" in m for m in lines)  # the start says so, as on a first paper start
    assert any("alpha for the KIS twin (env sim)" in m for m in lines)
    assert ACCOUNT not in "".join(lines) and ACCOUNT not in approvals.registry_path(gateways.run).read_text()
    register(paper, card())
    assert sum(m.getMessage().startswith("agent alpha refused") for m in caplog.records) == 1  # once, not per retry
    # the operator approves it for this account: honoured at once, recorded for the paper account
    approvals.approve(gateways.run, [card()], by="operator")
    a = approvals.load(gateways.run).cards["alpha"]
    assert a.owner is not None and a.owner["env"] == "paper" and a.owner["account"] == "50******-01"
    assert "s" * 16 not in msgspec.json.encode(a.owner).decode()  # fingerprints, never the secret
    assert paper.approved.get("alpha") is not None


def test_cards_approved_before_the_first_start_are_bound_to_its_owner(gateways: Gateways) -> None:
    """`ktrader demo` approves its cards before its gateway starts: bound to the twin at that start."""
    approvals.approve(gateways.run, [card()], by="ktrader demo")
    assert approvals.load(gateways.run).cards["alpha"].owner is None
    gateways.stop(gateways.start(BrokerEnv.SIM))
    assert approvals.load(gateways.run).cards["alpha"].owner == {"env": "sim"}
    assert gateways.start(BrokerEnv.PAPER).approved.get("alpha") is None


def test_an_approval_from_an_older_version_stays_honoured(tmp_path: Path) -> None:
    """Written before owners were kept (no owner): an upgrade takes no approval away."""
    run = tmp_path / "run"
    entry = {"card": msgspec.to_builtins(card()), "sha256": approvals.checksum(card()), "by": "older", "ts_ns": 1}
    path = approvals.registry_path(run)
    path.parent.mkdir(parents=True)
    path.write_bytes(msgspec.json.encode({"version": 1, "cards": {"alpha": entry}}))
    owner = {"env": "real", "account": "50******-01", "account_id": "ab" * 8, "key_id": "cd" * 4}
    view = approvals.ApprovedCards(run, owner)
    assert view.get("alpha") is not None
    approvals.bind_owner(run, owner)  # the gateway's start binds it to its own account
    assert approvals.load(run).cards["alpha"].owner == owner and view.get("alpha") is not None


def test_the_same_account_with_a_new_app_key_is_the_same_owner(gateways: Gateways) -> None:
    gateways.stop(gateways.start(BrokerEnv.PAPER))
    approvals.approve(gateways.run, [card()], by="operator")
    renewed = gateways.start(BrokerEnv.PAPER, app_key="n" * 36)  # KIS keys are reissued yearly
    assert renewed.approved.get("alpha") is not None
    gateways.stop(renewed)
    assert gateways.start(BrokerEnv.PAPER, account="50999999-01").approved.get("alpha") is None


def test_reset_archives_the_approvals(gateways: Gateways, capsys: pytest.CaptureFixture[str]) -> None:
    """The reported flow: the twin's first start approved cards/, the folder is reset for a paper account."""
    gateways.stop(gateways.start(BrokerEnv.SIM))
    approved = approvals.registry_path(gateways.run)
    assert approved.exists()
    dest = archive_run_dir(gateways.run)
    assert dest is not None and (dest / "keys" / "approved.json").exists()
    assert not approved.exists() and credentials.credential_path(gateways.run, "alpha").exists()  # keys stay
    out = capsys.readouterr().out
    assert "archived the approved cards" in out and "ktrader cards approve" in out
    paper = gateways.start(BrokerEnv.PAPER)
    assert approvals.load(gateways.run).cards == {} and paper.approved.get("alpha") is None


def test_reset_archives_approvals_even_when_nothing_else_is_there(tmp_path: Path) -> None:
    run = tmp_path / "run"
    approvals.approve(run, [card()], by="test")
    dest = archive_run_dir(run)
    assert dest is not None and (dest / "keys" / "approved.json").exists() and not approvals.exists(run)
    assert archive_run_dir(run) is None


def test_keys_revoke_withdraws_the_approval(gateways: Gateways) -> None:
    gateways.stop(gateways.start(BrokerEnv.SIM))
    assert credentials.credential_path(gateways.run, "alpha").exists()
    out = CliRunner().invoke(keys_app, ["revoke", "alpha", "--run-dir", str(gateways.run)])
    assert out.exit_code == 0, out.output
    assert not credentials.credential_path(gateways.run, "alpha").exists()
    gw = gateways.start(BrokerEnv.SIM)  # the next start: the revocation holds
    assert not credentials.credential_path(gateways.run, "alpha").exists()
    assert isinstance(err := register(gw, card()), Error) and err.code is ErrorCode.NOT_APPROVED
    assert "alpha" not in approvals.load(gateways.run).cards
    assert "withdrew the approval of alpha" in out.output and "approved again" in out.output
    assert "open orders keep working" in out.output and "cancel_all --agent alpha" in out.output
    again = CliRunner().invoke(keys_app, ["revoke", "alpha", "--run-dir", str(gateways.run)])
    assert again.exit_code == 0 and "no key, credential or approval for alpha" in again.output


def test_the_gateways_view_sees_two_saves_within_one_mtime_tick(tmp_path: Path) -> None:
    """The gateway's view of the approvals re-reads the file when it changed: two saves within the file system's
    mtime tick (a revoke right after an approval) read as one by the mtime alone, the second unseen. Each save
    replaces the file: its inode tells them apart."""
    import os

    run = tmp_path / "run"
    approvals.approve(run, [card()], by="t")
    view = approvals.ApprovedCards(run)
    assert view.get("alpha") is not None
    before = approvals.registry_path(run).stat().st_mtime_ns
    approvals.withdraw(run, "alpha")
    os.utime(approvals.registry_path(run), ns=(before, before))  # (the same tick)
    assert view.get("alpha") is None


def test_a_revoke_cut_short_is_not_undone_by_the_next_start(
    gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a hunt) The revoke removed the key and the credential first and withdrew the approval last: cut short between
    (a Ctrl-C, a closed terminal), the next gateway start issued the agent a fresh credential and it traded again.
    The approval goes first: whatever the revoke did not get to, the agent stays refused."""
    from common import curve

    gateways.stop(gateways.start(BrokerEnv.SIM))

    def cut_short(run_dir: Path, name: str) -> list[Path]:
        raise RuntimeError("cut short")  # the process ends right after the revoke's first step (a Ctrl-C, a kill)

    monkeypatch.setattr(curve, "revoke_client", cut_short)
    with pytest.raises(RuntimeError, match="cut short"):
        CliRunner().invoke(keys_app, ["revoke", "alpha", "--run-dir", str(gateways.run)], catch_exceptions=False)
    gw = gateways.start(BrokerEnv.SIM)
    assert isinstance(err := register(gw, card()), Error) and err.code is ErrorCode.NOT_APPROVED
    assert "alpha" not in approvals.load(gateways.run).cards


def test_a_revoke_whose_approvals_file_is_unreadable_still_locks_the_agent_out(tmp_path: Path) -> None:
    """(a review) With the approval withdrawn first, an unreadable approvals file ended the revoke before the key and
    the credential went: the agent kept connecting and trading. They go; the command fails saying the approval
    stands."""
    from common import curve

    run = tmp_path / "run"
    curve.init_gateway(run)
    secret = curve.make_client(run, "alpha")
    approvals.registry_path(run).write_text("{ not json")  # damaged (a crash, an edit by hand)
    r = CliRunner().invoke(keys_app, ["revoke", "alpha", "--run-dir", str(run)])
    assert not secret.exists() and not curve.client_public_path(run, "alpha").exists()
    assert r.exit_code == 2 and "NOT withdrawn" in r.output and "removed" in r.output, r.output
