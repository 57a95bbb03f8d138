"""run/gateway.json: how agents and tools find the gateway (endpoints, the signing key and, on
network endpoints, the gateway's CURVE public key).

Written by the gateway with mode 0600 (atomically), read by everyone else. The key never leaves
this file and process memory: it is not logged and not sent over the wire. On ipc the signing key
is new every run; with CURVE (tcp) it is the stable run/keys/signing.secret, so a remote agent's
copy of this file (`ktrader keys export`) survives gateway restarts."""

from __future__ import annotations

from pathlib import Path

import msgspec
import os

from common.private import others_could_write, write_atomic


class GatewayInfo(msgspec.Struct, frozen=True, kw_only=True):
    router: str
    pub: str
    key: str  # hex
    pid: int
    session: str
    started_ns: int
    curve_key: str = ""  # the gateway's CURVE public key (z85) when its endpoints cross a network
    # the gateway's agent lease (s): how long a crashed copy's registration may still be held, which a
    # restarted agent must outwait before "duplicate" means another live copy (0: not said, an older file)
    lease_s: float = 0.0

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"GatewayInfo(router={self.router!r}, pub={self.pub!r}, pid={self.pid}, session={self.session!r})"


class ConnectionFileError(RuntimeError):
    pass


def connection_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "gateway.json"


def write_info(run_dir: str | Path, info: GatewayInfo) -> Path:
    path = connection_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, msgspec.json.encode(info))


def read_info(run_dir: str | Path, trusted_only: bool = True) -> GatewayInfo:
    """The gateway's file, trusted only if no other user could have written it (`trusted_only`: the gateway
    reading its own file back, whose folder it checked at its start, asks only whether it is still its own):
    its endpoints and key decide where orders and the operator's commands go, and whose answers are believed."""
    path = connection_path(run_dir)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        raise ConnectionFileError(f"{path} not found: is the gateway running? (ktrader gateway)") from None
    except OSError as e:
        raise ConnectionFileError(f"{path}: unreadable ({e})") from None
    if trusted_only and (whose := others_could_write(path, st)):
        raise ConnectionFileError(f"{whose}: not trusted (run as the user who runs the gateway, in a folder of yours)")
    try:
        return msgspec.json.decode(data, type=GatewayInfo)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConnectionFileError(f"{path}: unreadable ({e})") from None


def remove_info(run_dir: str | Path, session: str) -> None:
    """Remove the file only if it is still ours (a newer gateway may have replaced it)."""
    try:
        if read_info(run_dir, trusted_only=False).session == session:
            connection_path(run_dir).unlink(missing_ok=True)
    except ConnectionFileError:
        pass
