"""The operator's registry of approved cards: what each agent may trade, with what money and limits.

An agent trades under the card the operator approved, never under what its running process declares:
a registering agent whose card differs from its approved one (checksum over the whole card) is
refused, naming the fields that differ. Approving is the operator's act — `ktrader cards approve CARD`
on the gateway's host, `ktrader control reload --agent ID --card CARD` (the gateway records it), or
the gateway's first start on a run folder, which approves the cards of its `trust.cards_dir` (the
developer's path: `ktrader gateway` then `ktrader agent run cards/x.toml`). Approving a card issues
the agent's credential (common/credentials.py) when it has none.

File: run/keys/approved.json (0600, written atomically under a lock):
    {"version": 1, "cards": {"<id>": {"card": {...}, "sha256": "...", "by": "...", "ts_ns": ...}}}
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import msgspec
from filelock import FileLock

from common import credentials
from common.config import AgentCard, ConfigError
from common.curve import keys_dir
from common.ids import EXTERNAL_AGENT
from common.private import write_atomic

log = logging.getLogger("ktrader.approvals")

FILE = "approved.json"
RESERVED = {
    credentials.GATEWAY: "the gateway signs its own replies so",
    EXTERNAL_AGENT: "orders placed outside ktrader",
}


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    card: AgentCard
    sha256: str
    by: str = ""  # who approved it (a tool, the gateway's first start, a reload)
    ts_ns: int = 0  # wall clock


class Registry(msgspec.Struct, kw_only=True):
    version: int = 1
    cards: dict[str, Approval] = {}


def checksum(card: AgentCard) -> str:
    """sha256 of the card's canonical JSON: keys sorted (the same card in any TOML order is the same) and
    fields at their default left out, so that a version of ktrader adding a card field (with a default)
    does not change the checksum of every card approved before it."""
    return _sha(_canonical(card))


def _sha(builtins: object) -> str:
    return hashlib.sha256(msgspec.json.encode(builtins, order="sorted")).hexdigest()


def _canonical(value: object) -> object:
    """`value` as JSON builtins, every struct field whose value is its default left out (nested too)."""
    if isinstance(value, msgspec.Struct):
        out: dict[str, object] = {}
        for f in msgspec.structs.fields(value):
            v = getattr(value, f.name)
            if f.default is not msgspec.NODEFAULT and v == f.default:
                continue
            if f.default_factory is not msgspec.NODEFAULT and v == f.default_factory():
                continue
            out[f.encode_name] = _canonical(v)
        return out
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return msgspec.to_builtins(value)


def registry_path(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / FILE


def exists(run_dir: str | Path) -> bool:
    return registry_path(run_dir).exists()


def load(run_dir: str | Path) -> Registry:
    path = registry_path(run_dir)
    try:
        data = path.read_bytes()
        reg = msgspec.json.decode(data, type=Registry)
    except FileNotFoundError:
        return Registry()
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    raw: dict[str, dict[str, object]] = {}
    for agent, a in reg.cards.items():
        sha = checksum(a.card)
        if a.card.id == agent and sha == a.sha256:
            continue
        # written by an older ktrader: its checksum covered every field the card had then, as stored
        if not raw:
            raw = msgspec.json.decode(data).get("cards", {})
        stored = raw.get(agent, {}).get("card")
        if a.card.id != agent or stored is None or _sha(stored) != a.sha256:
            raise ConfigError(
                f"{path}: the entry of {agent!r} does not match its checksum (edited by hand?); "
                f"approve the card again: ktrader cards approve CARD"
            )
        reg.cards[agent] = msgspec.structs.replace(a, sha256=sha)  # what registrations compare
    return reg


def _save(run_dir: str | Path, reg: Registry) -> None:
    path = registry_path(run_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, msgspec.json.format(msgspec.json.encode(reg)))


def _lock(run_dir: str | Path) -> FileLock:
    keys_dir(run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLock(str(registry_path(run_dir)) + ".lock", timeout=10)


def approve(run_dir: str | Path, cards: list[AgentCard], by: str) -> list[Approval]:
    """Record `cards` as approved (replacing earlier approvals of the same ids) and issue the
    credentials the agents do not have yet."""
    for card in cards:
        if card.id in RESERVED:
            raise ConfigError(f"{card.id!r} is reserved ({RESERVED[card.id]}): choose another agent id")
    with _lock(run_dir):
        reg = load(run_dir)
        done = []
        for card in cards:
            a = Approval(card=card, sha256=checksum(card), by=by, ts_ns=time.time_ns())
            reg.cards[card.id] = a
            done.append(a)
        _save(run_dir, reg)
    for card in cards:
        credentials.issue(run_dir, card.id)
    return done


def withdraw(run_dir: str | Path, agent: str) -> bool:
    with _lock(run_dir):
        reg = load(run_dir)
        if reg.cards.pop(agent, None) is None:
            return False
        _save(run_dir, reg)
        return True


def differences(approved: AgentCard, declared: AgentCard) -> list[str]:
    """The card fields that differ, with both values for the limits a person must look at."""
    a, b = msgspec.to_builtins(approved), msgspec.to_builtins(declared)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k} {a.get(k)!r} → {b.get(k)!r}" if k in ("budget", "risk", "mode", "codes") else k)
    return out


class ApprovedCards:
    """The gateway's view of the registry, re-read when the file changes."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._stamp: int | None = -1
        self.cards: dict[str, Approval] = {}
        self.error = ""  # why the file could not be read (then nothing is approved)

    def refresh(self) -> None:
        try:
            stamp: int | None = registry_path(self.run_dir).stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.cards, self.error = load(self.run_dir).cards, ""
        except ConfigError as e:  # nothing is approved until the operator approves again
            self.cards, self.error = {}, str(e)
            log.error("no agent may register: %s", e)

    def get(self, agent: str) -> Approval | None:
        self.refresh()
        return self.cards.get(agent)
