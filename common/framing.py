"""Frames on the wire: [magic, signature, body] (a ROUTER sees the peer identity first); on PUB, one
frame: topic, NUL, PUB magic, publisher token, body (see encode_pub).

The body is msgpack of a schema Message; the signature is a keyed BLAKE2b of the body with the
per-run key from run/gateway.json, so only processes that can read that file (mode 0600) can talk
to the gateway. Decoding never raises anything but FrameError, which carries the ErrorCode to
reply with and, when it could be read, the header of the offending message.

PUB frames are authenticated per publisher, not per message: each carries the token of the gateway
process that sent it, a keyed BLAKE2b of that process's session id with the same signing key
(`publisher_token`). A subscriber accepts only its gateway's token (`expect_publisher`, from the
session id of gateway.json or of the signed Registered reply). A process that binds the endpoint
while the gateway is down cannot make the token without the signing key, and cannot have seen it
without the access that the key also needs (the ipc folder is the user's alone; over tcp CURVE
admits registered clients only, who hold the key); a restarted gateway has a new token, so frames
recorded from an earlier one are refused too. This costs a 16-byte comparison per message where a
MAC cost a BLAKE2b of the body (~0.45 us of ~1.6 us a message at every subscriber).
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from common.errors import ErrorCode
from common.schema import SCHEMA_VERSION, Header, Message, Published

MAGIC = b"KT1"
PUB_MAGIC = b"KP3"  # a PUB frame since schema v3 (publisher token instead of a per-message MAC)
MAX_TOPIC = 128  # bytes before the NUL of a PUB frame
SIG_BYTES = 16
TOKEN_BYTES = 16
DEFAULT_MAX_BODY = 1 << 20


# msgspec raises UnicodeDecodeError (a ValueError) for invalid UTF-8 in strings, not DecodeError,
# and RecursionError for absurdly deep nesting (in an unknown field, which is skipped recursively).
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError)


class FrameError(Exception):
    def __init__(self, code: ErrorCode, message: str, header: Header | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.header = header


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
    def __init__(self, key: bytes, max_body: int = DEFAULT_MAX_BODY) -> None:
        if len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        self._mac = hashlib.blake2b(key=key, digest_size=SIG_BYTES)  # keyed once; copied per message
        self.max_body = max_body
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(Message)
        self._pub_dec = msgspec.msgpack.Decoder(Published)  # SUB sockets carry nothing else
        self._pub_probe = msgspec.msgpack.Decoder(_PubProbe)
        self._probe = msgspec.msgpack.Decoder(_Probe)
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

    def encode(self, msg: Message) -> list[bytes]:
        body = self._enc.encode(msg)
        return [MAGIC, self.sign(body), body]

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
        """frames = [magic, signature, body] (identity already stripped)."""
        if len(frames) != 3:
            raise FrameError(ErrorCode.BAD_MESSAGE, f"expected 3 frames, got {len(frames)}")
        magic, sig, body = frames
        if magic != MAGIC:
            raise FrameError(ErrorCode.BAD_MESSAGE, "bad magic frame")
        if len(body) > self.max_body:
            raise FrameError(ErrorCode.TOO_LARGE, f"body of {len(body)} bytes exceeds {self.max_body}")
        if len(sig) != SIG_BYTES or not hmac.compare_digest(sig, self.sign(body)):
            raise FrameError(ErrorCode.BAD_SIGNATURE, "signature does not match")
        try:
            msg = self._dec.decode(body)
        except _DECODE_ERRORS as e:
            raise self._undecodable(body, e) from None
        if msg.h.v != SCHEMA_VERSION:
            raise _version_error(msg.h.v, msg.h)
        return msg

    def _undecodable(self, body: bytes, e: Exception) -> FrameError:
        """A signed body that is not a message of ours: another schema version, or garbage."""
        header = self.peek_header(body)
        if header is not None and header.v != SCHEMA_VERSION:
            return _version_error(header.v, header)
        return FrameError(ErrorCode.BAD_MESSAGE, str(e)[:300], header)

    def peek_header(self, body: bytes) -> Header | None:
        try:
            return self._probe.decode(body).h
        except _DECODE_ERRORS:
            return None
