"""`ktrader cards approve` / `ktrader cards approved`: the operator's registry of approved cards
(common/approvals.py) and the agents' credentials it issues (common/credentials.py)."""

from __future__ import annotations

import datetime as dt
import getpass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from common import approvals, credentials
from common.config import AgentCard, ConfigError, load_card

if TYPE_CHECKING:
    from agent.client import GatewayClient


def _cards(paths: list[Path]) -> list[AgentCard]:
    cards = []
    for p in paths:
        files = sorted(p.glob("*.toml")) if p.is_dir() else [p]
        cards += [load_card(f) for f in files]
    return cards


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


def main(paths: list[Path], run_dir: Path) -> int:
    try:
        cards = _cards(paths)
        if not cards:
            typer.echo("error: no cards found", err=True)
            return 2
        ids = [c.id for c in cards]
        if len(set(ids)) != len(ids):
            typer.echo(f"error: an id is approved twice in one go: {sorted(ids)}", err=True)
            return 2
        done = approvals.approve(run_dir, cards, by=f"ktrader cards approve ({getpass.getuser()})")
    except (ConfigError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    for a in done:
        typer.echo(
            f"approved {a.card.id}: {a.card.mode} on {', '.join(a.card.codes) or 'no codes'}; {_limits(a.card)}  "
            f"(sha256 {a.sha256[:12]})"
        )
        typer.echo(f"  credential {credentials.credential_path(run_dir, a.card.id)}")
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
        when = dt.datetime.fromtimestamp(a.ts_ns / 1e9).strftime("%Y-%m-%d %H:%M") if a.ts_ns else "?"
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
