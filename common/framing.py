"""Frames on the wire: [magic, signer, signature, body] on ROUTER ⇄ DEALER (a ROUTER sees the peer
identity first); on PUB, one frame: topic, NUL, PUB magic, publisher token, body (see encode_pub).

The body is msgpack of a schema Message; the signature is a keyed BLAKE2b of the body with the
signer's own key. Each principal signs with its own credential (common/credentials.py): an agent
with its id's, the operator's tools with `ktrader-tools`, the gateway (its replies and PUB) with the
key in run/gateway.json. The receiver looks the signer's key up (`keyring`), so a frame is
attributable to exactly one credential, and the gateway can check who may do what. Requests are
also checked for freshness (common/freshness.py) when the codec has a `freshness`.

PUB frames are authenticated per publisher, not per message: each carries the token of the gateway
process that sent it, a keyed BLAKE2b of that process's session id with the gateway's key
(`publisher_token`). A subscriber accepts only its gateway's token (`expect_publisher`, from the
session id of gateway.json or of the signed Registered reply). A process that binds the endpoint
while the gateway is down cannot make the token without the gateway's key, and cannot have seen it
without the access that the key also needs (the ipc folder is the user's alone; over tcp CURVE
admits known clients only); a restarted gateway has a new token, so frames recorded from an earlier
one are refused too. This costs a 16-byte comparison per message where a MAC cost a BLAKE2b of the
body (~0.45 us of ~1.6 us a message at every subscriber).

Decoding never raises anything but FrameError, which carries the ErrorCode to reply with and, when it
could be read, the header of the offending message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import msgspec

from common.credentials import GATEWAY, Credential
from common.errors import ErrorCode
from common.freshness import Freshness
from common.schema import SCHEMA_VERSION, Header, Message, Published

PUB_MAGIC = b"KP3"  # a PUB frame since schema v3 (publisher token instead of a per-message MAC)
ROUTER_MAGIC = b"KT3"  # ROUTER ⇄ DEALER: [magic, signer, signature, body]
MAX_SIGNER = 64
MAX_TOPIC = 128  # bytes before the NUL of a PUB frame
SIG_BYTES = 16
TOKEN_BYTES = 16
DEFAULT_MAX_BODY = 1 << 20
# What a sender keeps one request's body under (an agent's SubmitOrders batches): a quarter of the gateway's
# default max_frame_bytes, so a gateway that lowered it still takes what an agent sends
SEND_BUDGET = DEFAULT_MAX_BODY // 4
_TAIL = 1024  # an encoded Header (ids, a uuid, four ints) is well under this
_H_KEY = b"\xa1h"  # msgpack of the field name "h"


# msgspec raises UnicodeDecodeError (a ValueError) for invalid UTF-8 in strings, not DecodeError,
# and RecursionError for absurdly deep nesting (in an unknown field, which is skipped recursively).
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError)


class FrameError(Exception):
    def __init__(self, code: ErrorCode, message: str, header: Header | None = None, signer: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.header = header
        self.signer = signer  # the authenticated signer, when the frame got that far


def _version_error(v: int, header: Header | None = None) -> FrameError:
    return FrameError(ErrorCode.SCHEMA_VERSION, f"schema v{v}, this side speaks v{SCHEMA_VERSION}", header)


class _PubProbe(msgspec.Struct, array_like=True, tag="pub"):
    """Reads only the version of a publication that does not decode as a whole (extra array
    items are ignored)."""

    v: int


class _Probe(msgspec.Struct):
    """Reads only the header of a message that does not decode as a whole."""

    h: Header


class Codec:
    def __init__(
        self,
        key: bytes,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        credential: Credential | None = None,
        keyring: Callable[[str], bytes | None] | None = None,
        freshness: Freshness | None = None,
    ) -> None:
        """`key`: the gateway's (it signs PUB and the gateway's replies). `credential`: whom this side
        signs ROUTER frames as (default: the gateway, with `key`). `keyring`: signer → key for the
        ROUTER frames this side accepts (default: the gateway's only). `freshness`: check requests'
        timestamps and replays (the gateway)."""
        if len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        self._mac = hashlib.blake2b(key=key, digest_size=SIG_BYTES)  # keyed once; copied per message
        cred = credential or Credential(GATEWAY, key)
        if len(cred.key) < 16:
            raise ValueError("credential key must be at least 16 bytes")
        self.signer = cred.name
        self._signer = cred.name.encode()
        self._own = hashlib.blake2b(key=cred.key, digest_size=SIG_BYTES)
        self._keyring: Callable[[str], bytes | None] = keyring or {GATEWAY: key}.get
        self._macs: dict[tuple[str, bytes], hashlib.blake2b] = {}  # (signer, key) -> keyed hash, copied per message
        self.freshness = freshness
        self.max_body = max_body
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(Message)
        self._pub_dec = msgspec.msgpack.Decoder(Published)  # SUB sockets carry nothing else
        self._pub_probe = msgspec.msgpack.Decoder(_PubProbe)
        self._probe = msgspec.msgpack.Decoder(_Probe)
        self._header_dec = msgspec.msgpack.Decoder(Header)
        self.pub_token: bytes | None = None  # the token of the publisher this subscriber trusts

    def publisher_token(self, session: str) -> bytes:
        """The token on every PUB frame of the gateway process `session` (see the module's doc)."""
        return self.sign(b"ktrader publisher token\0" + session.encode())

    def expect_publisher(self, session: str) -> None:
        """Accept PUB frames from the gateway process `session` only."""
        self.pub_token = self.publisher_token(session)

    def sign(self, body: bytes) -> bytes:
        mac = self._mac.copy()  # a third cheaper than keying a new hash for every message
        mac.update(body)
        return mac.digest()

    def sign_request(self, body: bytes) -> list[bytes]:
        """[magic, signer, signature] for an encoded body, as `encode` frames it (tests, tools)."""
        mac = self._own.copy()
        mac.update(body)
        return [ROUTER_MAGIC, self._signer, mac.digest()]

    def encode(self, msg: Message) -> list[bytes]:
        body = self._enc.encode(msg)
        mac = self._own.copy()
        mac.update(body)
        return [ROUTER_MAGIC, self._signer, mac.digest(), body]

    def encode_body(self, msg: object) -> bytes:
        return self._enc.encode(msg)

    @staticmethod
    def encode_pub(topic: bytes, body: bytes, token: bytes) -> bytes:
        """PUB message: ONE frame, `topic NUL PUB_MAGIC token body`. ZMQ filters subscriptions on the
        frame's prefix, so the topic (with its trailing delimiter) leads. Every subscriber pays per
        frame: recv() of one frame costs ~0.3 us, recv_multipart() of [topic, payload] ~2.5 us."""
        return b"".join((topic, b"\0", PUB_MAGIC, token, body))

    def decode_pub(self, blob: bytes) -> Published:
        """One PUB frame as sent by encode_pub, from the expected publisher; the body's topic must
        be the frame's. The checks of _decode, inlined: this runs for every message at every
        subscriber."""
        cut = blob.find(b"\0", 0, MAX_TOPIC + 1)
        if cut < 0:
            raise FrameError(ErrorCode.BAD_MESSAGE, "no topic terminator in a PUB frame")
        start = cut + 1 + len(PUB_MAGIC)
        if not blob.startswith(PUB_MAGIC, cut + 1):
            raise FrameError(ErrorCode.BAD_MESSAGE, "bad magic in a PUB frame")
        token = self.pub_token
        if token is None or not hmac.compare_digest(blob[start : start + TOKEN_BYTES], token):
            raise FrameError(ErrorCode.BAD_SIGNATURE, "not from the expected gateway (publisher token)")
        body = blob[start + TOKEN_BYTES :]
        if len(body) > self.max_body:
            raise FrameError(ErrorCode.TOO_LARGE, f"body of {len(body)} bytes exceeds {self.max_body}")
        try:
            msg = self._pub_dec.decode(body)
        except _DECODE_ERRORS as e:
            try:
                v = self._pub_probe.decode(body).v
            except _DECODE_ERRORS:
                v = SCHEMA_VERSION
            if v != SCHEMA_VERSION:
                raise _version_error(v) from None
            raise FrameError(ErrorCode.BAD_MESSAGE, str(e)[:300]) from None
        if msg.v != SCHEMA_VERSION:
            raise _version_error(msg.v)
        if len(msg.topic) != cut or not blob.startswith(msg.topic.encode()):
            raise FrameError(ErrorCode.BAD_MESSAGE, f"topic {blob[:cut]!r} does not match the body's {msg.topic!r}")
        return msg

    def decode(self, frames: list[bytes]) -> Message:
        """frames = [magic, signer, signature, body] (identity already stripped)."""
        return self.decode_from(frames)[1]

    def _verifier(self, signer: str) -> hashlib.blake2b | None:
        key = self._keyring(signer)
        if key is None:
            return None
        mac = self._macs.get((signer, key))
        if mac is None:
            if len(self._macs) > 10_000:
                self._macs.clear()
            mac = self._macs[(signer, key)] = hashlib.blake2b(key=key, digest_size=SIG_BYTES)
        return mac

    def decode_from(self, frames: list[bytes]) -> tuple[str, Message]:
        """(the authenticated signer, the message)."""
        if len(frames) != 4:
            raise FrameError(ErrorCode.BAD_MESSAGE, f"expected 4 frames, got {len(frames)}")
        magic, who, sig, body = frames
        if magic != ROUTER_MAGIC:
            raise FrameError(ErrorCode.BAD_MESSAGE, "bad magic frame (an older ktrader? upgrade it)")
        if len(who) > MAX_SIGNER:
            raise FrameError(ErrorCode.BAD_SIGNATURE, "unknown signer")
        try:
            signer = who.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(ErrorCode.BAD_SIGNATURE, "unknown signer") from None
        base = self._verifier(signer)
        if base is None:
            raise FrameError(ErrorCode.BAD_SIGNATURE, f"no credential named {signer[:32]!r}")
        mac = base.copy()
        mac.update(body)
        if len(sig) != SIG_BYTES or not hmac.compare_digest(sig, mac.digest()):
            raise FrameError(ErrorCode.BAD_SIGNATURE, "signature does not match")
        if len(body) > self.max_body:
            # checked once signed (ZMQ's MAXMSGSIZE bounds the hashing), so the reply carries the request's mid
            # and its sender can tell which request failed; the body itself is never decoded
            too_large = f"body of {len(body)} bytes exceeds {self.max_body}"
            raise FrameError(ErrorCode.TOO_LARGE, too_large, self.peek_tail_header(body), signer)
        try:
            msg = self._dec.decode(body)
        except _DECODE_ERRORS as e:
            err = self._undecodable(body, e)
            err.signer = signer
            raise err from None
        h = msg.h
        if h.v != SCHEMA_VERSION:
            err = _version_error(h.v, h)
            err.signer = signer
            raise err
        if self.freshness is not None:
            refused = self.freshness.check(signer, h.sid, h.mid, h.ts)
            if refused is not None:
                raise FrameError(refused[0], refused[1], h, signer)
        return signer, msg

    def _undecodable(self, body: bytes, e: Exception) -> FrameError:
        """A signed body that is not a message of ours: another schema version, or garbage."""
        header = self.peek_header(body)
        if header is not None and header.v != SCHEMA_VERSION:
            return _version_error(header.v, header)
        return FrameError(ErrorCode.BAD_MESSAGE, str(e)[:300], header)

    def peek_tail_header(self, body: bytes) -> Header | None:
        """The header of a body too large to decode, from its last bytes alone: msgspec writes a message's
        kw_only `h` after its own fields, so it ends every Message (tests/unit/test_too_large_request_answered.py)."""
        tail = bytes(body[-_TAIL:])
        at = len(tail)
        while (at := tail.rfind(_H_KEY, 0, at)) >= 0:
            try:
                return self._header_dec.decode(tail[at + len(_H_KEY) :])
            except _DECODE_ERRORS:
                continue  # those bytes inside a string, not the field's name
        return None

    def peek_header(self, body: bytes) -> Header | None:
        try:
            return self._probe.decode(body).h
        except _DECODE_ERRORS:
            return None
