"""`ktrader control reload --agent ID [--card PATH]` (and the console's and web page's reload):
the changed card is checked with the card checker's rules before it is sent; the gateway applies
its limits and params (server/operator.py) or refuses it and keeps the old card."""

from __future__ import annotations

from pathlib import Path

from common.approvals import checksum
from common.config import AgentCard, ConfigError, load_card
from common.schema import reload_expect
from kis.master import folder_master
from tools.ops.cards_check import card_problems
from tools.ops.status import send_control


class ReloadError(Exception):
    """The card cannot be reloaded as it is; the message says why (nothing was sent)."""


def find_card(cards_dir: Path, agent: str) -> Path | None:
    """The first card in `cards_dir` whose id is `agent`."""
    for path in sorted(Path(cards_dir).glob("*.toml")):
        try:
            if load_card(path).id == agent:
                return path
        except ConfigError:
            continue
    return None


def checked_card(path: Path, agent: str, run_dir: str | Path) -> AgentCard:
    """`agent`'s card at `path`, checked with the card checker's rules against the run folder's stock master (a
    reload's, and its preview's)."""
    try:
        card = load_card(path)
    except ConfigError as e:
        raise ReloadError(f"{e}: nothing changed") from None
    if card.id != agent:
        raise ReloadError(f"{path} is the card of {card.id!r}, not {agent!r}: nothing changed")
    errors = [p for p in card_problems(path, card, folder_master(run_dir)) if not p.warning]
    if errors:
        raise ReloadError("; ".join(str(p) for p in errors) + ": nothing changed")
    return card


def reload_card(
    run_dir: str | Path,
    agent: str,
    card_path: Path | None = None,
    cards_dir: Path = Path("cards"),
    sender: str = "ktrader-control",
    *,
    expect_sha: str | None = None,
    expect_preview: str | None = None,
) -> str:
    """`expect_sha`: the checksum of the card a preview showed (common/approvals.checksum): a card file
    changed since is refused, not applied unseen. `expect_preview`: that preview's text: the gateway refuses the
    reload if a preview now reads otherwise (the card in force changed since: another operator's reload)."""
    path = card_path or find_card(cards_dir, agent)
    if path is None:
        raise ReloadError(f"no card with id {agent!r} in {cards_dir}/: give it with --card PATH")
    card = checked_card(path, agent, run_dir)
    if expect_sha is not None and checksum(card) != expect_sha:
        raise ReloadError(f"{path} changed since the preview you confirmed: nothing applied; preview it again")
    value = reload_expect(expect_preview) if expect_preview is not None else ""
    return send_control(run_dir, "reload", agent, card=card, sender=sender, value=value)
