"""Who may speak to the gateway: one signing credential per principal, bound to its name.

Every request to the gateway's ROUTER is signed (keyed BLAKE2b) with the sender's own credential and
names it (common/framing.py). Principals:

- an agent: its credential is named by its id and may act only on that agent (register as it, trade
  and query as it);
- the operator (console, web page, `ktrader status`/`control`/`trace`): `ktrader-tools`, the one
  credential that may control other agents and the gateway. It is the same name as the tools' CURVE
  key, so on tcp the connection's key and the frame's credential must agree.

Files (the gateway's host; folders 0700, files 0600, a file readable by others is refused):

    run/keys/credentials/<name>.secret      32 random bytes, hex

The gateway knows them all (it verifies every frame); an agent's host holds only its own. On one host
under one OS user every process can read every file: there the boundary is the protocol (an agent
runtime loads and uses only its own credential); for hard separation run agents as another user or
on another host (`ktrader keys export` ships only that agent's credential).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError
from common.curve import TOOLS, check_client_name, keys_dir
from common.private import make_private, write_atomic

log = logging.getLogger("ktrader.credentials")

OPERATOR = TOOLS  # "ktrader-tools": never an agent id (ids have no '-')
GATEWAY = "gateway"  # the gateway's own replies (signed with the key in run/gateway.json)
CREDENTIALS = "credentials"
SUFFIX = ".secret"


class CredentialError(ConfigError):
    """A credential missing, unreadable or too open; the message says which file and what to run."""


@dataclass(frozen=True, slots=True)
class Credential:
    name: str
    key: bytes = field(repr=False)


def credentials_dir(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / CREDENTIALS


def credential_path(run_dir: str | Path, name: str) -> Path:
    return credentials_dir(run_dir) / f"{name}{SUFFIX}"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def issue(run_dir: str | Path, name: str, force: bool = False) -> tuple[Path, bool]:
    """The credential of `name`, made when missing (or replaced with `force`: the holder of the old
    one is locked out). Returns (path, made)."""
    check_client_name(name)
    path = credential_path(run_dir, name)
    if path.exists() and not force:
        return path, False
    _private_dir(keys_dir(run_dir))
    _private_dir(path.parent)
    write_atomic(path, (secrets.token_hex(32) + "\n").encode("ascii"))
    return path, True


def write(run_dir: str | Path, cred: Credential) -> Path:
    """Put an existing credential in another run folder (`ktrader keys export`)."""
    check_client_name(cred.name)
    path = credential_path(run_dir, cred.name)
    _private_dir(keys_dir(run_dir))
    _private_dir(path.parent)
    write_atomic(path, (cred.key.hex() + "\n").encode("ascii"))
    return path


def _read(path: Path, name: str, hint: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise CredentialError(f"{path} not found: {hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialError(f"{path}: unreadable ({e})") from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CredentialError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise CredentialError(f"{path}: not a hex key; {hint}") from None
    if len(key) < 16:
        raise CredentialError(f"{path}: key shorter than 16 bytes; {hint}")
    return key


def hint_for(name: str) -> str:
    if name == OPERATOR:
        return "it is made when the gateway starts on this run folder (the operator's credential)"
    return (
        f"the operator approves the agent's card on the gateway's host: ktrader cards approve CARD "
        f"(or ktrader keys export {name} for another host)"
    )


def load(run_dir: str | Path, name: str) -> Credential:
    check_client_name(name)
    return Credential(name, _read(credential_path(run_dir, name), name, hint_for(name)))


def revoke(run_dir: str | Path, name: str) -> bool:
    check_client_name(name)
    path = credential_path(run_dir, name)
    if path.exists():
        path.unlink()
        return True
    return False


def all_credentials(run_dir: str | Path) -> dict[str, bytes]:
    """name → key of every readable credential file (a bad one is skipped, said in the log: it authenticates
    nobody, and its client's every request times out as 'busy or stuck?' with nothing else to tell why)."""
    folder = credentials_dir(run_dir)
    out: dict[str, bytes] = {}
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        name = path.name.removesuffix(SUFFIX)
        try:
            check_client_name(name)
            out[name] = _read(path, name, "")
        except ConfigError as e:
            log.warning("credential of %s not used: %s", name, e)
            continue
    return out


def tighten_credentials(run_dir: str | Path) -> list[Path]:
    """The credential files readable by others made private (0600): the gateway's own, at its start (a folder
    restored from a backup, `chmod -R a+r`: the gateway skipped them untold and every tool and agent timed out).
    Returns those changed."""
    folder = credentials_dir(run_dir)
    return [path for path in sorted(folder.glob(f"*{SUFFIX}")) if path.is_file() and make_private(path)]


def _folder_stamp(folder: Path) -> tuple[int, ...] | None:
    """What changes when a credential does: the folder's mtime (a file added, removed, replaced) and each file's
    mode (a `chmod 600` of a skipped one changes no folder mtime: its key was never taken up, a review)."""
    try:
        modes = [p.stat().st_mode for p in sorted(folder.glob(f"*{SUFFIX}"))]
        return (folder.stat().st_mtime_ns, *modes)
    except OSError:
        return None


class Keyring:
    """The gateway's view of the credentials folder: looked up per frame, re-read when the folder
    changes (an approval or a revocation takes effect without a restart). The folder is looked at
    for every name it does not know (one stat: a new agent's first frame is never lost) and, by the
    gateway's lease loop, at most every `every_s` (a revocation)."""

    def __init__(self, run_dir: str | Path, every_s: float = 0.5) -> None:
        self.run_dir = Path(run_dir)
        self.every_s = every_s
        self.keys: dict[str, bytes] = {}
        self._stamp: tuple[int, ...] | None = (-1,)
        self._checked = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False, now: bool = False) -> None:
        t = time.monotonic()
        if not force and not now and t - self._checked < self.every_s:
            return
        self._checked = t
        stamp = _folder_stamp(credentials_dir(self.run_dir))
        if stamp != self._stamp or force:
            self._stamp = stamp
            self.keys = all_credentials(self.run_dir)

    def __call__(self, name: str) -> bytes | None:
        key = self.keys.get(name)
        if key is None:
            self.refresh(force=False, now=True)
            key = self.keys.get(name)
        return key
