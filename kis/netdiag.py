"""Why a connection to KIS failed, in words an operator can act on.

aiohttp, httpx and websockets report a refused port, an unknown host name and an untrusted
certificate alike as a "connect error"; the cause sits in the exception chain. `explain()` walks it and returns a
`NetProblem`: which host:port, what happened (closed vocabulary), the underlying reason
(CERTIFICATE_VERIFY_FAILED kept verbatim), whether the request may have reached the server, and
what to check. Used by the REST client, the websocket watchdog, start-up and `ktrader doctor`.

The phase decides "sent" before the cause does: only a failure of the connect phase (aiohttp's
ClientConnectorError family, its connect timeout) proves nothing was written. An SSLError, a reset
or a refusal found in the chain of a later failure (aiohttp's ClientOSError from a TLS record that
did not decrypt while reading the reply) says how the stream broke, not that the request stayed here.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from enum import StrEnum
from urllib.parse import urlsplit

import aiohttp
import httpx
import msgspec

from common.redact import redact
from kis.port import BrokerTemporary


class NetFault(StrEnum):
    DNS = "dns"  # the host name does not resolve
    REFUSED = "refused"  # nothing listens on host:port (or a firewall rejects)
    TIMEOUT = "timeout"  # no answer in time (connect or read)
    TLS_VERIFY = "tls_verify"  # the server's certificate is not trusted (CERTIFICATE_VERIFY_FAILED)
    TLS = "tls"  # another TLS handshake failure (protocol, wrong port speaking plain HTTP, ...)
    CUT = "cut"  # the connection dropped (reset, closed without an answer)
    PROTOCOL = "protocol"  # something answered, but not HTTP/websocket as expected
    OTHER = "other"


class NetProblem(msgspec.Struct, frozen=True, kw_only=True):
    fault: NetFault
    target: str  # host:port
    reason: str  # the underlying reason, short
    sent: bool  # the request may have reached the server

    def text(self) -> str:
        return f"{self.target}: {self.reason}"

    def hint(self) -> str:
        host = self.target.rsplit(":", 1)[0]
        port = self.target.rsplit(":", 1)[-1]
        return {
            NetFault.DNS: f"check the host name '{host}' (broker.rest_url / ws_url) and this machine's DNS and network",
            NetFault.REFUSED: f"nothing accepts connections on {self.target}: check the URL's port, the network and "
            f"any firewall (outbound port {port})",
            NetFault.TIMEOUT: f"{self.target} did not answer in time: check the network, firewall or proxy for "
            f"outbound port {port}",
            NetFault.TLS_VERIFY: "the server's certificate is not trusted here: behind a TLS-inspecting proxy set "
            "broker.ca_bundle "
            "to the proxy's CA file (PEM); also check the system clock",
            NetFault.TLS: f"TLS with {self.target} failed: check that the URL's scheme (https/http) and port are right",
            NetFault.CUT: f"the connection to {self.target} was cut: usually transient; check the network if it "
            "persists",
            NetFault.PROTOCOL: f"{self.target} did not answer as KIS does: check the URL",
            NetFault.OTHER: f"check the network path to {self.target}",
        }[self.fault]


class BrokerUnreachable(BrokerTemporary):
    """A KIS call that failed in transport; `problem` says where and why."""

    def __init__(self, what: str, problem: NetProblem) -> None:
        super().__init__(f"{what}: {problem.text()}", code="TRANSPORT")
        self.problem = problem


def target_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme, 0)
    return f"{parts.hostname or '?'}:{port}"


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 12:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


# a URL's query string: account inquiries carry the account number there (CANO=...)
_QUERY = re.compile(r"(\b(?:https?|wss?)://[^\s?'\"]*)\?[^\s'\"]*")


def _short(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientResponseError):
        # its str() ends with the request URL, query string included: status and message only
        text = f"{e.status} {' '.join(str(e.message).split())}".strip()
    else:
        text = (str(e).strip() or type(e).__name__).splitlines()[0]
    return text[:200]


def _clean(reason: str) -> str:
    """A reason is shown in errors, replies and alerts: no query string, no registered secret."""
    return redact(_QUERY.sub(r"\1", reason))


def explain(exc: BaseException, url: str) -> NetProblem:
    """What went wrong reaching `url`, from a transport exception (httpx, websockets, OSError)."""
    problem = _explain(exc, url)
    return msgspec.structs.replace(problem, reason=_clean(problem.reason))


# aiohttp's failures of the connect phase (DNS, refused, connect timeout, the TLS handshake, a proxy, a
# URL it cannot use): raised before a byte of the request is written, so the request was surely not sent.
# Every other aiohttp error comes from writing the request or reading its answer: it may have arrived.
_AIOHTTP_CONNECT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,  # incl. ClientConnectorSSLError/CertificateError/DNSError, proxy, unix
    aiohttp.ConnectionTimeoutError,
    aiohttp.InvalidURL,
    aiohttp.NonHttpUrlClientError,
)
# httpx's failures after the connection was made (the request written, or being written)
_HTTPX_AFTER_CONNECT: tuple[type[BaseException], ...] = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
)


def connect_failed(exc: BaseException) -> bool:
    """True only when aiohttp says the request failed in its connect phase: nothing of it was written.
    The REST client resends an order or a cancel only then (any later failure may have placed it).

    The one source of "sent" for aiohttp's errors: `explain(exc).sent` is `not connect_failed(exc)`
    for them. For anything else (httpx, websockets, a bare OSError) `explain` can only guess the phase
    from the type and the cause; that guess is good enough to word a problem or to retry a read, but
    it proves nothing, so an order or a cancel asks this function, never `explain(...).sent`."""
    return isinstance(exc, _AIOHTTP_CONNECT) and not isinstance(exc, aiohttp.RedirectClientError)


def _explain(exc: BaseException, url: str) -> NetProblem:
    target = target_of(url)
    chain = _chain(exc)
    if isinstance(exc, aiohttp.ClientError):
        # aiohttp: its phase (connect_failed) says whether anything was sent, the cause only what broke
        if not connect_failed(exc):
            return _explain_after_connect(exc, chain, target)
        return msgspec.structs.replace(_explain_cause(exc, chain, target), sent=False)
    if isinstance(exc, _HTTPX_AFTER_CONNECT):
        # httpx's failures after the connection was made: a TLS error while reading is no handshake
        return _explain_after_connect(exc, chain, target)
    return _explain_cause(exc, chain, target)


def _explain_cause(exc: BaseException, chain: list[BaseException], target: str) -> NetProblem:
    """A failure before the request was written, or one whose phase is not known: the cause decides."""
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            detail = getattr(e, "verify_message", "") or _short(e)
            return NetProblem(
                fault=NetFault.TLS_VERIFY, target=target, reason=f"TLS CERTIFICATE_VERIFY_FAILED ({detail})", sent=False
            )
    for e in chain:
        if isinstance(e, socket.gaierror):
            return NetProblem(
                fault=NetFault.DNS, target=target, reason=f"host name not resolved ({_short(e)})", sent=False
            )
        if isinstance(e, ConnectionRefusedError):
            return NetProblem(fault=NetFault.REFUSED, target=target, reason="connection refused", sent=False)
        if isinstance(e, ssl.SSLError):
            return NetProblem(
                fault=NetFault.TLS, target=target, reason=f"TLS handshake failed ({_short(e)})", sent=False
            )
    text = " | ".join(_short(e) for e in chain)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return NetProblem(
            fault=NetFault.TLS_VERIFY,
            target=target,
            reason=f"TLS CERTIFICATE_VERIFY_FAILED ({_short(exc)})",
            sent=False,
        )
    if (
        "Name or service not known" in text
        or "nodename nor servname" in text
        or "Temporary failure in name resolution" in text
    ):
        return NetProblem(
            fault=NetFault.DNS, target=target, reason=f"host name not resolved ({_short(exc)})", sent=False
        )
    if "Connection refused" in text or "Connect call failed" in text:
        return NetProblem(fault=NetFault.REFUSED, target=target, reason="connection refused", sent=False)
    return _by_type(exc, chain, target)


def _explain_after_connect(exc: BaseException, chain: list[BaseException], target: str) -> NetProblem:
    """The connection was made and the request written (or being written): whatever broke after
    that, the server may have it. A TLS error here broke the stream, it is no failed handshake."""
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return NetProblem(
                fault=NetFault.CUT,
                target=target,
                reason=f"TLS stream broken after the request was sent ({_short(e)})",
                sent=True,
            )
    return msgspec.structs.replace(_by_type(exc, chain, target), sent=True)


def _by_type(exc: BaseException, chain: list[BaseException], target: str) -> NetProblem:
    # aiohttp (the KIS REST client): the connect phase never sent anything; after it, it may have
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return NetProblem(fault=NetFault.TIMEOUT, target=target, reason="no connection within the timeout", sent=False)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return NetProblem(fault=NetFault.TIMEOUT, target=target, reason="no answer within the timeout", sent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return NetProblem(fault=NetFault.OTHER, target=target, reason=f"cannot connect ({_short(exc)})", sent=False)
    if isinstance(exc, aiohttp.InvalidURL):
        return NetProblem(fault=NetFault.PROTOCOL, target=target, reason=f"unsupported URL ({_short(exc)})", sent=False)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return NetProblem(fault=NetFault.CUT, target=target, reason=f"connection cut ({_short(exc)})", sent=True)
    if isinstance(exc, aiohttp.ClientResponseError):
        return NetProblem(
            fault=NetFault.PROTOCOL, target=target, reason=f"not an HTTP answer ({_short(exc)})", sent=True
        )
    if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        return NetProblem(fault=NetFault.TIMEOUT, target=target, reason="no connection within the timeout", sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return NetProblem(fault=NetFault.TIMEOUT, target=target, reason="no answer within the timeout", sent=True)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return NetProblem(fault=NetFault.TIMEOUT, target=target, reason="no answer within the timeout", sent=False)
    if isinstance(exc, httpx.ConnectError):
        return NetProblem(fault=NetFault.OTHER, target=target, reason=f"cannot connect ({_short(exc)})", sent=False)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return NetProblem(fault=NetFault.PROTOCOL, target=target, reason=f"unsupported URL ({_short(exc)})", sent=False)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, ConnectionError)):
        return NetProblem(fault=NetFault.CUT, target=target, reason=f"connection cut ({_short(exc)})", sent=True)
    if any(type(e).__module__.startswith("websockets") for e in chain):
        return NetProblem(
            fault=NetFault.PROTOCOL, target=target, reason=f"websocket handshake failed ({_short(exc)})", sent=False
        )
    return NetProblem(fault=NetFault.OTHER, target=target, reason=f"{type(exc).__name__}: {_short(exc)}", sent=True)
