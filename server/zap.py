"""CURVE on the gateway's network endpoints: server keys on the sockets and a ZAP check that lets in
only the client keys listed in run/keys/clients/*.key (common/curve.py has the files).

The check runs on the gateway's asyncio loop (zmq.auth's AsyncioAuthenticator) and only at a
connection's handshake, never per message. The allow-list is re-read when the clients folder
changes, so `ktrader keys agent ID` and `ktrader keys revoke ID` take effect for new connections
without a restart (a revoked client that is still connected stays until it disconnects).

Refusals are counted for `ktrader status` (counters bad_curve_key: a key nobody registered;
bad_curve_handshake: a plaintext client or a wrong gateway key) and logged, a few at a time.
ipc endpoints are left exactly as they were.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import recv_monitor_message

from common import curve

log = logging.getLogger("ktrader.zap")

LOG_FIRST = 5  # refusals logged in full; after that one line per LOG_EVERY
LOG_EVERY = 100
_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


class _KnownKeys:
    """The ZAP credentials check: is this public key in clients/*.key?"""

    def __init__(self, run_dir: Path, counters: Counter[str]) -> None:
        self.run_dir = run_dir
        self.counters = counters
        self.names: dict[bytes, str] = {}
        self._stamp: int | None = -1

    def refresh(self) -> None:
        try:
            stamp: int | None = curve.clients_dir(self.run_dir).stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self.names = curve.authorised_clients(self.run_dir)

    def callback(self, domain: str, key: bytes) -> bool:
        self.refresh()
        if key in self.names:
            return True
        self.counters["bad_curve_key"] += 1
        n = self.counters["bad_curve_key"]
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning(
                "refused a connection with an unknown CURVE key %s... (%d so far): register the client with "
                "`ktrader keys agent ID` on this host",
                key[:8].decode("ascii", "replace"),
                n,
            )
        return False


class _Authenticator(AsyncioAuthenticator):
    def __init__(self, ctx: zmq.Context, known: _KnownKeys) -> None:
        super().__init__(ctx, log=logging.getLogger("ktrader.zap.zmq"))
        self.known = known

    def curve_user_id(self, client_public_key: bytes) -> str:
        """Frames from this peer carry the key file's name as their User-Id (agent identities, later)."""
        from zmq.utils import z85

        return self.known.names.get(z85.encode(client_public_key), "")


class ZapGuard:
    def __init__(self, run_dir: str | Path, counters: Counter[str], ctx: zmq.Context | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.counters = counters
        self.ctx = ctx or zmq.Context.instance()
        self.pair: curve.KeyPair | None = None
        self._auth: _Authenticator | None = None
        self._monitors: list[tuple[zmq.Socket, zmq.Socket]] = []  # (watched socket, its monitor)

    @property
    def public_key(self) -> str:
        """For gateway.json: "" when no endpoint uses CURVE."""
        return self.pair.public.decode("ascii") if self.pair is not None else ""

    def signing_key(self, *endpoints: str) -> bytes | None:
        """The stable frame-signing key when any endpoint crosses a network; None on ipc (the caller
        then makes a new key for this run)."""
        return curve.signing_key(self.run_dir) if any(curve.network(ep) for ep in endpoints) else None

    def secure(self, sock: zmq.Socket, endpoint: str) -> None:
        """Call before bind: a network endpoint gets CURVE and the known-keys check; ipc is untouched."""
        if not curve.network(endpoint):
            return
        if self.pair is None:
            self.pair = curve.gateway_pair(self.run_dir)
        if self._auth is None:
            known = _KnownKeys(self.run_dir, self.counters)
            known.refresh()
            self._auth = _Authenticator(self.ctx, known)
            self._auth.start()
            self._auth.configure_curve_callback(curve.ZAP_DOMAIN.decode(), known)
            log.info(
                "CURVE on network endpoints: %d client keys known (%s)",
                len(known.names),
                ", ".join(sorted(known.names.values())) or "none: ktrader keys agent ID",
            )
        curve.serve(sock, self.pair)
        self._watch(sock)

    def _watch(self, sock: zmq.Socket) -> None:
        """Count handshakes that fail before any key check (plaintext peers, a wrong gateway key)."""
        mon = sock.get_monitor_socket(_FAILED)
        self._monitors.append((sock, mon))
        asyncio.get_running_loop().add_reader(mon.fileno(), self._drain, mon)
        self._drain(mon)

    def _drain(self, mon: zmq.Socket) -> None:
        while True:  # the FD is edge-triggered: read everything
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                continue  # an unknown key: counted by the ZAP check, which knows the key
            self.counters["bad_curve_handshake"] += 1
            n = self.counters["bad_curve_handshake"]
            if n <= LOG_FIRST or n % LOG_EVERY == 0:
                log.warning(
                    "a peer failed the CURVE handshake on %s (%d so far): a plaintext client, or one with an "
                    "old gateway key",
                    ev["endpoint"].decode("ascii", "replace"),
                    n,
                )

    def stop(self) -> None:
        """Before the watched sockets close."""
        loop = asyncio.get_running_loop()
        for sock, mon in self._monitors:
            loop.remove_reader(mon.fileno())
            if not sock.closed:
                sock.disable_monitor()
            mon.close(0)
        self._monitors.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
