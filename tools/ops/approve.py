"""`ktrader cards approve` / `ktrader cards approved`: the operator's registry of approved cards
(common/approvals.py) and the agents' credentials it issues (common/credentials.py)."""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from common import approvals, credentials
from common.clock import KST
from common.config import AgentCard, BrokerEnv, ConfigError, load_card
from common.enums import AgentMode, AgentState
from server.run_folder import foreign_folder, ktrader_marks

if TYPE_CHECKING:
    from agent.client import GatewayClient


def _cards(paths: list[Path]) -> list[tuple[Path, AgentCard]]:
    cards = []
    for p in paths:
        files = sorted(p.glob("*.toml")) if p.is_dir() else [p]
        cards += [(f, load_card(f)) for f in files]
    return cards


def gateway_was_here(run_dir: Path) -> bool:
    """Whether a gateway has used `run_dir` (or it was set up for one): its connection file, store,
    run lock or operator credential, or the keys of `ktrader keys init`. Approving into a folder
    with none of these is most likely the wrong folder (the gateway runs with another --run-dir or
    config), and the approval file it creates stops a first start there from approving cards_dir."""
    return any(p.exists() for p in ktrader_marks(run_dir) if p.name != "approved.json")


def _card_errors(
    cards: list[tuple[Path, AgentCard]], run_dir: Path, master_dir: str = "", env: BrokerEnv | None = None
) -> tuple[list[str], int]:
    """The one-card rules of `ktrader cards check` (strategy loads, params valid, limits that can
    work, ...), its codes against the run folder's stock master: an agent whose card breaks them fails
    after it registers, so it is not approved. (errors, number of warnings)."""
    from kis.master import MasterError, folder_master
    from tools.ops.cards_check import card_problems

    sys.path.insert(0, str(Path.cwd()))  # strategies may live in the working tree, as for cards check
    try:
        sm = folder_master(run_dir, master_dir)
    except (MasterError, OSError) as e:  # (the config's master_dir cannot be read: the gateway would not start)
        return [f"error: the stock master in {master_dir}: {e}"], 0
    kind = env.value if env is not None else (folder_owner(run_dir) or {}).get("env", "")  # (--config: a fresh folder)
    if not sm.strict and kind in (BrokerEnv.PAPER.value, BrokerEnv.REAL.value):
        # (a paper or real folder whose gateway reads master_dir, or whose copy cannot be read: said, not silent)
        typer.echo(
            f"note: the codes are checked against the twin's list only (no readable KIS master in {run_dir}/master): "
            "pass the gateway's --config if it reads master_dir",
            err=True,
        )
    problems = [p for f, card in cards for p in card_problems(f, card, sm)]
    return [str(p) for p in problems if not p.warning], sum(p.warning for p in problems)


def _limits(card: AgentCard) -> str:
    r = card.risk
    unlimited = [
        k for k, v in ((("max_order_value", r.max_order_value), ("max_daily_loss", r.max_daily_loss))) if not v
    ]
    parts = [
        f"budget {card.budget:,}" if card.budget else "budget NONE (only the gateway's account limits)",
        f"max order {r.max_order_value:,}" if r.max_order_value else "",
        f"daily loss {r.max_daily_loss:,}" if r.max_daily_loss else "",
    ]
    note = f"; no card limit on {', '.join(unlimited)} (the gateway's account-wide limits apply)" if unlimited else ""
    return ", ".join(x for x in parts if x) + note


def folder_owner(run_dir: Path) -> dict[str, str] | None:
    """The broker environment and account whose books the folder holds: the store's (server/store.py
    claim_owner, kept once KIS proved it), else the one its gateway last recorded in the approvals; None
    when neither says (no gateway proved one yet)."""
    import apsw

    from server.store import OWNER, Store

    db = run_dir / "db" / "gateway.sqlite"
    if db.exists():
        try:
            store = Store(db, readonly=True)  # (WAL: read beside a running gateway)
            try:
                held = store.meta_prefix(OWNER)
            finally:
                store.close()
            if held:
                return held
        except apsw.Error:  # an empty or foreign file: the registry may still say
            pass
    try:
        return approvals.load(run_dir).owner
    except ConfigError:
        return None


def _tty_answer(question: str) -> str | None:
    """The operator's answer at a terminal; None when stdin is not one (a script, a pipe)."""
    if not sys.stdin.isatty():
        return None
    try:
        return input(question)
    except EOFError:
        return ""


def confirm_real(
    run_dir: Path,
    cards: list[AgentCard],
    yes: bool,
    ask: Callable[[str], str | None] = _tty_answer,
    env: BrokerEnv | None = None,
) -> int:
    """Cards approved into a folder whose owner is a REAL account trade real money: said, with the masked
    account and the money, and asked (or --yes). 0 to go on, else the exit code. Paper and twin folders,
    and cards that only shadow (never send an order), are not asked about. `env`: the gateway config's
    broker environment, for a folder no gateway has proven an account of yet (--fresh, a first start that
    failed): a real config is asked about too."""
    owner = folder_owner(run_dir) or ({"env": env.value} if env is not None else None)
    live = [c for c in cards if c.mode is AgentMode.LIVE]
    if owner is None or owner.get("env") != BrokerEnv.REAL.value or not live:
        return 0
    total = sum(c.budget for c in live)
    unbudgeted = sum(not c.budget for c in live)
    typer.echo(
        f"approving {len(live)} card{'s' if len(live) != 1 else ''} to trade LIVE on the REAL account "
        f"{owner.get('account', '(account not recorded)')} (budgets total {total:,} KRW"
        + (f"; {unbudgeted} with no budget: only the account-wide limits" if unbudgeted else "")
        + ")"
    )
    # the store keeps no account cash: a budget total above the account's cash is not told here
    if yes:
        return 0
    answer = ask("approve them for real money? [y/N] ")
    if answer is None:
        typer.echo("error: not approved: the folder trades on a REAL account; add --yes to approve", err=True)
        return 2
    if answer.strip().lower() not in ("y", "yes"):
        typer.echo("not approved (nothing changed)", err=True)
        return 1
    return 0


def _say_changes(run_dir: Path, cards: list[AgentCard]) -> list[str]:
    """What an approval replaces, before it is made (and before a real account's question): each limit
    or parameter that moves, old → new; a card approved as it stands, said so. Returns the ids that change."""
    held = approvals.load(run_dir).cards if approvals.exists(run_dir) else {}
    changed = []
    for card in cards:
        before = held.get(card.id)
        if before is None:
            continue
        changes = approvals.differences(before.card, card)
        if not changes:
            typer.echo(f"{card.id}: the card is the one approved already (nothing changes)")
            continue
        changed.append(card.id)
        typer.echo(f"{card.id}: changes from the approved card:")
        for line in changes:
            typer.echo(f"  {line}")
        if before.card.mode != card.mode:  # (the gateway's rule: server/order_desk.py set_mode)
            typer.echo(
                f"  the mode switch applies at {card.id}'s next start, and the gateway refuses it while the agent "
                "holds shares, has open orders or traded today: flatten it first, or start it the next trading day"
            )
    return changed


def _say_running(run_dir: Path, changed: dict[str, Path]) -> None:
    """Agents whose approved card changed and that run now (the gateway's status, if one answers): they keep their
    old card until a reload or their next registration, which then refuses their old card (an approval of tighter
    limits read as done while the agent went on under the old ones, then exited 7 mid-session at a lease lapse: a
    hunt). Nothing said when no gateway answers (the next start takes the approved card)."""
    from tools.ops.status import fetch_status

    try:
        st = fetch_status(run_dir, timeout_s=2.0)
    except Exception:  # noqa: BLE001  (no gateway running, or not answering: nothing is running under a card)
        return
    for a in st.agents:
        if a.id in changed and a.state is AgentState.ONLINE:
            typer.echo(
                f"note: {a.id} is running under its previous card: `ktrader control reload --agent {a.id} --card "
                f"{changed[a.id]}` applies this one now (else its next registration refuses the old card and it exits)"
            )


def main(
    paths: list[Path],
    run_dir: Path,
    fresh: bool = False,
    yes: bool = False,
    ask: Callable[[str], str | None] = _tty_answer,
    env: BrokerEnv | None = None,
    master_dir: str = "",
) -> int:
    """`fresh`: approve into a run folder no gateway has used yet (refused otherwise). `yes`: no question for
    a folder of a REAL account (confirm_real); `ask` puts that question (None: no terminal to ask at). `master_dir`:
    the gateway config's folder of master files, the codes' master (else the run folder's copy: folder_master)."""
    if foreign := foreign_folder(run_dir):  # (its keys/ would make any folder pass for a run folder)
        typer.echo(f"error: {foreign}: give the gateway's run folder (--run-dir or --config)", err=True)
        return 2
    if not fresh and not gateway_was_here(run_dir):
        typer.echo(
            f"error: no gateway has run on {run_dir}/ (no gateway.json, no store): pass the gateway's "
            "--run-dir or --config; approving here would not reach it",
            err=True,
        )
        typer.echo(
            f"  (--fresh approves into {run_dir}/ anyway; its gateway's first start then approves only the "
            "cards approved here, not [trust] cards_dir)",
            err=True,
        )
        return 2
    try:
        cards = _cards(paths)
        if not cards:
            typer.echo("error: no cards found", err=True)
            return 2
        ids = [c.id for _, c in cards]
        if len(set(ids)) != len(ids):
            typer.echo(f"error: an id is approved twice in one go: {sorted(ids)}", err=True)
            return 2
        errors, warnings = _card_errors(cards, run_dir, master_dir, env)
        if errors:
            for line in errors:
                typer.echo(line, err=True)
            typer.echo(f"error: not approved ({len(errors)} errors): fix the card, then approve it again", err=True)
            return 2
        if warnings:
            typer.echo(f"note: {warnings} warnings (ktrader cards check CARD shows them)", err=True)
        changed = _say_changes(run_dir, [c for _, c in cards])
        refused = confirm_real(run_dir, [c for _, c in cards], yes, ask, env)
        if refused:
            return refused
        done = approvals.approve(run_dir, [c for _, c in cards], by=f"ktrader cards approve ({getpass.getuser()})")
    except (ConfigError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    for a in done:
        typer.echo(
            f"approved {a.card.id}: {a.card.mode} on {', '.join(a.card.codes) or 'no codes'}; {_limits(a.card)}  "
            f"(sha256 {a.sha256[:12]})"
        )
        typer.echo(f"  credential {credentials.credential_path(run_dir, a.card.id)}")
    if changed:
        _say_running(run_dir, {c.id: path for path, c in cards if c.id in changed})
    return 0


def listing(run_dir: Path) -> int:
    try:
        reg = approvals.load(run_dir)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    if not reg.cards:
        typer.echo(f"no approved cards in {approvals.registry_path(run_dir)}: ktrader cards approve CARD")
        return 0
    for agent, a in sorted(reg.cards.items()):
        when = f"{dt.datetime.fromtimestamp(a.ts_ns / 1e9, KST):%Y-%m-%d %H:%M} KST" if a.ts_ns else "?"
        has = "credential" if credentials.credential_path(run_dir, agent).exists() else "NO credential"
        typer.echo(f"{agent:<20} {_limits(a.card)}  approved {when} by {a.by}  {has}  sha256 {a.sha256[:12]}")
    return 0


def approved_client(run_dir: Path, card: AgentCard, subscribe: bool = False) -> GatewayClient:
    """A client speaking as `card`'s agent: the card approved on the run folder (the caller acts as the
    operator: benchmarks, campaigns, tests), signing with the agent's own credential."""
    from agent.client import GatewayClient
    from common.connection import read_info
    from common.schema import HeaderFactory

    approvals.approve(run_dir, [card], by="ktrader tool")
    return GatewayClient(
        read_info(run_dir),
        card.id,
        HeaderFactory(card.id),
        subscribe=subscribe,
        credential=credentials.load(run_dir, card.id),
    )
