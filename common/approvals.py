"""The operator's registry of approved cards: what each agent may trade, with what money and limits.

An agent trades under the card the operator approved, never under what its running process declares:
a registering agent whose card differs from its approved one (checksum over the whole card) is
refused, naming the fields that differ. Approving is the operator's act — `ktrader cards approve CARD`
on the gateway's host, `ktrader control reload --agent ID --card CARD` (the gateway records it), or
the gateway's first start on a run folder, which approves the cards of its `trust.cards_dir` (the
developer's path: `ktrader gateway` then `ktrader agent run cards/x.toml`). Approving a card issues
the agent's credential (common/credentials.py) when it has none.

An approval is for one broker environment and account: its `owner`, the same mapping the store keeps
for the books (server/core.py run_owner: env, and on paper/real the masked account and keyed
fingerprints; no secret). A gateway honours only the approvals made for its own owner, so cards the twin
approved on a first start never trade on the paper or real account the folder later serves.
`ktrader reset` archives this file with the books (tools/ops/reset.py).

File: run/keys/approved.json (0600, written atomically under a lock):
    {"version": 1, "owner": {...}, "cards": {"<id>": {"card": {...}, "sha256": "...", "by": "...", "ts_ns": ...,
     "owner": {...}}}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
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
    # the environment and account it was approved for (run_owner's mapping). None: written by a ktrader
    # from before owners were kept, or approved into a folder no gateway had started on yet; honoured by
    # any gateway (upgrade compatibility: an upgrade does not take an operator's approvals away), and
    # bound to the owner of the next gateway that starts on the folder (bind_owner)
    owner: dict[str, str] | None = None


class Registry(msgspec.Struct, kw_only=True):
    version: int = 1
    owner: dict[str, str] | None = None  # the folder's owner as its gateway last started: what approve() records
    cards: dict[str, Approval] = {}


def owner_key_changed(held: Mapping[str, str], owner: Mapping[str, str]) -> bool:
    """Whether the account fingerprint in `held` was made under another owner key than `owner`'s
    (run/keys/owner.key was lost, or the fingerprint predates the key): then the two fingerprints cannot
    be compared, and same_owner compares the masked accounts instead."""
    return "account_id" in held and held.get("key_id") != owner.get("key_id", held.get("key_id"))


def same_owner(held: Mapping[str, str] | None, owner: Mapping[str, str] | None) -> bool:
    """Whether what was kept for `held` (a run folder's books: server/store.py Store.check_owner; an
    approval: ApprovedCards) belongs to `owner` (server/core.py run_owner), the one rule for both: the
    same environment, and where both name an account by its keyed fingerprint, the same account; a
    fingerprint made under another owner key (owner_key_changed) is compared by its masked form and its app
    key's fingerprint, and where `held` has none, nothing more can be compared. A new app key on the same
    account is the same owner (while the owner key is kept). What names no owner (a folder before its first
    proven start, an approval from an older ktrader, a view that was given none) or no account (a broker port
    without KIS credentials) is not refused: there is nothing to compare."""
    if not held or owner is None:
        return True
    if held.get("env") != owner.get("env"):
        return False
    if "account_id" not in held or "account_id" not in owner:
        return True
    if not owner_key_changed(held, owner):
        return held["account_id"] == owner["account_id"]
    # the masked form alone names a million accounts (two of one person's often share it): the app key must be
    # the same too (KIS issues a key to one account; a hunt: another account with the same masked form took a
    # folder's books, held orders and approvals once its owner key was gone)
    held_masked, held_key = held.get("account"), held.get("app_key")
    return (held_masked is None or held_masked == owner.get("account")) and (
        not held_key or not owner.get("app_key") or held_key == owner["app_key"]
    )


def describe(owner: Mapping[str, str] | None) -> str:
    """'the KIS twin (env sim)' / 'the paper account 50******-01': no secret (server/store.py describe_owner)."""
    if owner is None:
        return "any account"
    env = owner.get("env", "?")
    if env == "sim":
        return "the KIS twin (env sim)"
    if "account" not in owner:
        return f"env {env}"
    return f"the {env} account {owner['account']}"


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
        reg = _decode(data, path)
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


class _RawRegistry(msgspec.Struct, kw_only=True):
    version: int = 1
    owner: dict[str, str] | None = None
    cards: dict[str, msgspec.Raw] = {}


def _decode(data: bytes, path: Path) -> Registry:
    """The registry, each approval validated on its own: one a newer ktrader's rules refuse (a card approved
    with max_open_orders = -1 before negative limits were refused) is left out, named in the log, instead of
    the whole file taking every agent's approval away."""
    raw = msgspec.json.decode(data, type=_RawRegistry)
    cards: dict[str, Approval] = {}
    for agent, entry in raw.cards.items():
        try:
            cards[agent] = msgspec.json.decode(entry, type=Approval)
        except msgspec.ValidationError as e:
            log.error(
                "%s: the approval of %r is not valid under this ktrader (%s): it is not honoured; fix its card "
                "and approve it again: ktrader cards approve CARD",
                path,
                agent,
                e,
            )
    return Registry(version=raw.version, owner=raw.owner, cards=cards)


def _save(run_dir: str | Path, reg: Registry) -> None:
    path = registry_path(run_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, msgspec.json.format(msgspec.json.encode(reg)))


def _lock(run_dir: str | Path) -> FileLock:
    keys_dir(run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLock(str(registry_path(run_dir)) + ".lock", timeout=10)


def approve(
    run_dir: str | Path, cards: list[AgentCard], by: str, owner: Mapping[str, str] | None = None
) -> list[Approval]:
    """Record `cards` as approved (replacing earlier approvals of the same ids) for `owner` (default: the
    folder's, as its gateway last started; none before a gateway has started here) and issue the
    credentials the agents do not have yet."""
    for card in cards:
        if card.id in RESERVED:
            raise ConfigError(f"{card.id!r} is reserved ({RESERVED[card.id]}): choose another agent id")
    with _lock(run_dir):
        reg = load(run_dir)
        held = dict(owner) if owner is not None else reg.owner
        done = []
        for card in cards:
            a = Approval(card=card, sha256=checksum(card), by=by, ts_ns=time.time_ns(), owner=held)
            reg.cards[card.id] = a
            done.append(a)
        _save(run_dir, reg)
    for card in cards:
        credentials.issue(run_dir, card.id)
    return done


def bind_owner(run_dir: str | Path, owner: Mapping[str, str]) -> Registry:
    """A gateway's start: record `owner` as the folder's (what later approvals are made for) and bind the
    approvals that name no owner to it (approved before this folder's first start, e.g. by `ktrader demo`, or by
    an older ktrader: honoured, now for this owner only), and those of this owner made under an owner key since
    lost. Returns the registry."""
    with _lock(run_dir):
        reg = load(run_dir)
        changed = reg.owner != owner
        reg.owner = dict(owner)
        for agent, a in reg.cards.items():
            # (and those made under an owner key since lost, proven the same owner now: kept under the new key, or
            # the app key's next yearly reissue would refuse them all: their owner is told apart by it alone)
            if a.owner is None or (
                a.owner != owner and owner_key_changed(a.owner, owner) and same_owner(a.owner, owner)
            ):
                reg.cards[agent] = msgspec.structs.replace(a, owner=dict(owner))
                changed = True
        if changed:
            _save(run_dir, reg)
        return reg


def withdraw(run_dir: str | Path, agent: str) -> bool:
    """Take an agent's approval back: it may not register until its card is approved again."""
    with _lock(run_dir):
        reg = load(run_dir)
        if reg.cards.pop(agent, None) is None:
            return False
        _save(run_dir, reg)
        return True


def differences(approved: AgentCard, declared: AgentCard) -> list[str]:
    """The card fields that differ, each old → new, a table's entries one by one (card_diff)."""
    return card_diff(msgspec.to_builtins(approved), msgspec.to_builtins(declared))


def _shown(v: object) -> str:
    """A card value as a person reads it: integers (money, counts) with thousands separators."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v, ensure_ascii=False)


def card_diff(old: dict[str, object], new: dict[str, object], prefix: str = "") -> list[str]:
    """Each changed field of a card (as builtins) as "field old → new", nested tables as dotted names
    ("risk.max_order_value 1,000,000 → 2,000,000", "params.qty 1 → 3"); a field one side lacks is "none"."""
    out: list[str] = []
    for k in sorted(old.keys() | new.keys()):
        x, y = old.get(k), new.get(k)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            out += card_diff(x, y, f"{prefix}{k}.")
        else:
            was = "none" if k not in old else _shown(x)
            out.append(f"{prefix}{k} {was} → {'none' if k not in new else _shown(y)}")
    return out


class ApprovedCards:
    """The gateway's view of the registry, re-read when the file changes. Given the gateway's owner
    (bind), it holds only the approvals made for that owner (same_owner)."""

    def __init__(self, run_dir: str | Path, owner: Mapping[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._stamp: tuple[int, int, int] | None = (-1, -1, -1)
        self.cards: dict[str, Approval] = {}
        self.error = ""  # why the file could not be read (then nothing is approved)
        self.owner: dict[str, str] | None = dict(owner) if owner is not None else None
        self._told: set[tuple[str, int]] = set()  # refusals for another owner already logged (agent, ts_ns)

    def bind(self, owner: Mapping[str, str]) -> None:
        """The gateway's owner, once known at its start: from now on an approval for another owner is none."""
        self.owner = dict(owner)

    def refresh(self) -> None:
        try:
            # (with the inode: every save replaces the file (write_atomic), two within the file system's mtime tick
            # read as one, the second unseen)
            st = registry_path(self.run_dir).stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
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

    def refusal(self, agent: str) -> str:
        """Why `agent`'s approval is not honoured here ("" when it is, or when there is none): approved for
        another environment or account, or the approvals file itself refused (a damaged or hand-edited entry: every
        agent was told "no approved card", the cause only in the gateway's log: a hunt)."""
        self.refresh()
        if self.error:
            return f"the approvals are refused: {self.error}"
        a = self.cards.get(agent)
        if a is None or same_owner(a.owner, self.owner):
            return ""
        return f"its card was approved for {describe(a.owner)}, not for this gateway's {describe(self.owner)}"

    def get(self, agent: str) -> Approval | None:
        self.refresh()
        a = self.cards.get(agent)
        if a is None or same_owner(a.owner, self.owner):
            return a
        if (agent, a.ts_ns) not in self._told:  # one line per approval, not one per retry
            self._told.add((agent, a.ts_ns))
            log.warning(
                "agent %s refused: its card was approved for %s, not for this gateway's %s; to let it trade on "
                "this account, approve it again: ktrader cards approve --run-dir %s CARD (the card of %s)",
                agent,
                describe(a.owner),
                describe(self.owner),
                self.run_dir,
                agent,
            )
        return None
