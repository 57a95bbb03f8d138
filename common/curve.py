"""CURVE keys for the gateway's network endpoints: where the key files live, how they are written
and read, and the socket options of both ends.

ipc endpoints stay as they are (the run folder's file modes guard them); any endpoint that can be
reached over a network (tcp://...) is served with ZMQ CURVE (encrypted, and only clients whose
public key the gateway knows get in: server/zap.py). The files, in ZMQ's own certificate format so
`zmq.auth` and czmq tools read them:

    run/keys/                      0700
      gateway.key                  the gateway's public key (also published in run/gateway.json)
      gateway.key_secret           0600, never leaves the gateway's host
      signing.secret               0600, the frame-signing key while CURVE is on (stable across
                                   restarts, so a remote agent's copy of gateway.json stays valid)
      clients/<name>.key           public keys the gateway accepts: <name> is an agent id, or
                                   ktrader-tools for the operator tools (status, control, top)
      clients/<name>.key_secret    0600, that client's own pair (on the client's host)

A secret file readable by group or others is refused, as ssh refuses a loose private key.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth import load_certificate

from common.config import ConfigError
from common.ids import AGENT_ID_PATTERN
from common.private import write_atomic

KEYS = "keys"
CLIENTS = "clients"
GATEWAY = "gateway"
SIGNING = "signing.secret"
TOOLS = "ktrader-tools"  # never an agent id: ids have no '-'
ZAP_DOMAIN = b"ktrader"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)


class CurveError(ConfigError):
    """Keys missing, unreadable or too open; the message says which file and what to run."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # z85, 40 characters
    secret: bytes = field(repr=False)
    name: str = ""  # the key file's name: an agent id, ktrader-tools or gateway


def network(endpoint: str) -> bool:
    """ipc:// and inproc:// stay on this host; every other transport can cross a network."""
    return bool(endpoint) and not endpoint.startswith(("ipc://", "inproc://"))


def keys_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / KEYS


def gateway_public_path(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / f"{GATEWAY}.key"


def gateway_secret_path(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / f"{GATEWAY}.key_secret"


def clients_dir(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / CLIENTS


def client_public_path(run_dir: str | Path, name: str) -> Path:
    return clients_dir(run_dir) / f"{name}.key"


def client_secret_path(run_dir: str | Path, name: str) -> Path:
    return clients_dir(run_dir) / f"{name}.key_secret"


def signing_path(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / SIGNING


def register_hint(name: str) -> str:
    """What to run on the gateway's host so that it accepts the client `name`."""
    return "ktrader keys init" if name == TOOLS else f"ktrader keys agent {name}"


def check_client_name(name: str) -> str:
    if name != TOOLS and not _AGENT_ID.match(name):
        raise CurveError(f"{name!r} is not an agent id (lower-case letters, digits, '_'; 2-32 characters)")
    return name


def check_agent_name(name: str) -> str:
    """An agent's id, never the operator's own client (`keys agent/revoke/export ktrader-tools` made, deleted or
    shipped the key `ktrader status` and `control halt` speak with: the console locked out until a restart)."""
    if name == TOOLS:
        raise CurveError(f"{TOOLS} is the operator's own key (ktrader keys init makes it), not an agent's")
    return check_client_name(name)


# ---- writing ----------------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is masked by the umask, and the folder may exist already


def _write(path: Path, text: str, mode: int) -> None:
    """Atomic: the file appears complete with its final mode, never half-written or briefly open."""
    write_atomic(path, text.encode("utf-8"), mode)


def _certificate(public: bytes, secret: bytes | None, what: str) -> str:
    """ZMQ's certificate text (what zmq.auth.create_certificates writes)."""
    lines = [
        f"#   ****  Generated on {dt.datetime.now():%Y-%m-%d %H:%M:%S} by ktrader keys  ****",
        f"#   ZeroMQ CURVE {what} Certificate",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret is not None:
        lines.insert(2, "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def write_secret(secret_path: Path, pair: KeyPair) -> None:
    _private_dir(secret_path.parent.parent)  # keys/ (a client's file lives in keys/clients/)
    _private_dir(secret_path.parent)
    _write(secret_path, _certificate(pair.public, pair.secret, "**Secret**"), 0o600)


def write_pair(public_path: Path, secret_path: Path, pair: KeyPair) -> None:
    """The public half first: a pair is there once its secret file is (init_gateway, make_client), so a write cut
    short between the two is written again whole (secret first, the half pair was taken as done and its client,
    whose public key the gateway authorises, refused for good: a hunt)."""
    _private_dir(secret_path.parent.parent)
    _private_dir(public_path.parent)
    _write(public_path, _certificate(pair.public, None, "Public"), 0o644)
    write_secret(secret_path, pair)


def _new_pair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def init_gateway(run_dir: str | Path, force: bool = False) -> list[Path]:
    """The gateway's pair, the signing key and the operator tools' pair; existing files are kept
    unless `force` (a new gateway key locks out every client until it has the new gateway.json)."""
    _private_dir(keys_dir(run_dir))
    made: list[Path] = []
    if force or not gateway_secret_path(run_dir).exists():
        write_pair(gateway_public_path(run_dir), gateway_secret_path(run_dir), _new_pair())
        made.append(gateway_secret_path(run_dir))
    if force or not signing_path(run_dir).exists():
        _write(signing_path(run_dir), secrets.token_hex(32) + "\n", 0o600)
        made.append(signing_path(run_dir))
    if force or not client_secret_path(run_dir, TOOLS).exists():
        made.append(make_client(run_dir, TOOLS, force=True))
    return made


def make_client(run_dir: str | Path, name: str, force: bool = False) -> Path:
    """A client's pair; its public half is what the gateway accepts. Refuses to replace an existing
    pair unless `force` (the client holding the old secret would be locked out)."""
    check_client_name(name)
    secret = client_secret_path(run_dir, name)
    if secret.exists() and not force:
        raise CurveError(f"{secret} exists; use --force to replace it (the client holding it is then locked out)")
    write_pair(client_public_path(run_dir, name), secret, _new_pair())
    return secret


def revoke_client(run_dir: str | Path, name: str) -> list[Path]:
    check_client_name(name)
    gone = []
    for path in (client_public_path(run_dir, name), client_secret_path(run_dir, name)):
        if path.exists():
            path.unlink()
            gone.append(path)
    return gone


# ---- reading ----------------------------------------------------------------------------------------


def _read_cert(path: Path, how_to_fix: str) -> tuple[bytes, bytes | None]:
    try:
        return load_certificate(path)
    except OSError as e:
        if path.exists():
            raise CurveError(f"{path}: unreadable ({e})") from None
        raise CurveError(f"{path} not found: {how_to_fix}") from None
    except ValueError as e:
        raise CurveError(f"{path}: not a CURVE certificate ({e})") from None


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CurveError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")


def load_secret_pair(path: Path, how_to_fix: str) -> KeyPair:
    public, secret = _read_cert(path, how_to_fix)
    if secret is None:
        raise CurveError(f"{path} holds no secret key (is it the public .key file?)")
    _check_private(path)
    return KeyPair(public, secret, path.name.removesuffix(".key_secret"))


def gateway_pair(run_dir: str | Path) -> KeyPair:
    return load_secret_pair(gateway_secret_path(run_dir), "tcp endpoints need CURVE keys; run: ktrader keys init")


def client_pair(run_dir: str | Path, name: str) -> KeyPair:
    path = client_secret_path(run_dir, name)
    hint = (
        f"on the gateway's host run `ktrader keys agent {name}` (or `ktrader keys export {name}`) and put the file here"
        if name != TOOLS
        else "run: ktrader keys init (on the gateway's host)"
    )
    return load_secret_pair(path, hint)


def client_pair_for(run_dir: str | Path, name: str, *endpoints: str) -> KeyPair | None:
    """The client's pair when any of the endpoints it dials crosses a network, else None."""
    return client_pair(run_dir, name) if any(network(ep) for ep in endpoints) else None


def signing_key(run_dir: str | Path) -> bytes:
    path = signing_path(run_dir)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise CurveError(f"{path} not found: tcp endpoints need CURVE keys; run: ktrader keys init") from None
    except UnicodeDecodeError:
        text = ""
    _check_private(path)
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise CurveError(f"{path}: not a hex key; run: ktrader keys init --force") from None
    if len(key) < 16:
        raise CurveError(f"{path}: key shorter than 16 bytes; run: ktrader keys init --force")
    return key


def authorised_clients(run_dir: str | Path) -> dict[bytes, str]:
    """Public key (z85) → client name, from clients/*.key (unreadable files are skipped)."""
    found: dict[bytes, str] = {}
    folder = clients_dir(run_dir)
    for path in sorted(folder.glob("*.key")) if folder.is_dir() else []:
        try:
            public, _ = load_certificate(path)
        except (OSError, ValueError):
            continue
        found[public] = path.stem
    return found


def check_gateway_keys(run_dir: str | Path, *endpoints: str) -> None:
    """Pre-flight for a gateway start: with a network endpoint every key file must be usable."""
    if any(network(ep) for ep in endpoints):
        gateway_pair(run_dir)
        signing_key(run_dir)


# ---- socket options ---------------------------------------------------------------------------------


def serve(sock: zmq.Socket[Any], pair: KeyPair) -> None:
    """Server side; set before bind. The ZAP domain routes handshakes to server/zap.py's check."""
    sock.curve_server = True
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.zap_domain = ZAP_DOMAIN


def dial(sock: zmq.Socket[Any], pair: KeyPair, server_public: bytes) -> None:
    """Client side; set before connect."""
    sock.curve_serverkey = server_public
    sock.curve_publickey = pair.public
    sock.curve_secretkey = pair.secret


def dial_gateway(sock: zmq.Socket[Any], run_dir: str | Path, name: str, endpoint: str, server_key: str) -> None:
    """A client socket about to connect to `endpoint`: CURVE with `name`'s pair over a network, as is
    on ipc. `server_key` is gateway.json's curve_key."""
    if not network(endpoint):
        return
    if not server_key:
        raise CurveError(
            f"gateway.json names no CURVE key for {endpoint}: refresh it from the gateway's host (ktrader keys export)"
        )
    dial(sock, client_pair(run_dir, name), server_key.encode("ascii"))
