"""Frames on the wire: [magic, signature, body] (a ROUTER sees the peer identity first); on PUB,
[topic, magic+signature+body] (see encode_pub).

The body is msgpack of a schema Message; the signature is a keyed BLAKE2b of the body with the
per-run key from run/gateway.json, so only processes that can read that file (mode 0600) can talk
to the gateway. Decoding never raises anything but FrameError, which carries the ErrorCode to
reply with and, when it could be read, the header of the offending message.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from common.errors import ErrorCode
from common.schema import SCHEMA_VERSION, Header, Message

MAGIC = b"KT1"
SIG_BYTES = 16
DEFAULT_MAX_BODY = 1 << 20


# msgspec raises UnicodeDecodeError (a ValueError) for invalid UTF-8 in strings, not DecodeError.
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError)


class FrameError(Exception):
    def __init__(self, code: ErrorCode, message: str, header: Header | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.header = header


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
        self._probe = msgspec.msgpack.Decoder(_Probe)

    def sign(self, body: bytes) -> bytes:
        mac = self._mac.copy()  # a third cheaper than keying a new hash for every message
        mac.update(body)
        return mac.digest()

    def encode(self, msg: Message) -> list[bytes]:
        body = self._enc.encode(msg)
        return [MAGIC, self.sign(body), body]

    def encode_body(self, msg: object) -> bytes:
        return self._enc.encode(msg)

    def encode_pub(self, body: bytes) -> bytes:
        """PUB payload: magic, signature and body in ONE frame after the topic frame. Each frame
        costs every subscriber a receive and an object; market data is the high-rate path."""
        return MAGIC + self.sign(body) + body

    def decode_pub(self, frames: list[bytes]) -> Message:
        """frames = [topic, magic+signature+body] as sent by encode_pub."""
        if len(frames) != 2:
            raise FrameError(ErrorCode.BAD_MESSAGE, f"expected 2 frames, got {len(frames)}")
        blob = frames[1]
        cut = len(MAGIC) + SIG_BYTES
        return self._decode(blob[: len(MAGIC)], blob[len(MAGIC) : cut], blob[cut:])

    def decode(self, frames: list[bytes]) -> Message:
        """frames = [magic, signature, body] (identity already stripped)."""
        if len(frames) != 3:
            raise FrameError(ErrorCode.BAD_MESSAGE, f"expected 3 frames, got {len(frames)}")
        return self._decode(*frames)

    def _decode(self, magic: bytes, sig: bytes, body: bytes) -> Message:
        if magic != MAGIC:
            raise FrameError(ErrorCode.BAD_MESSAGE, "bad magic frame")
        if len(body) > self.max_body:
            raise FrameError(ErrorCode.TOO_LARGE, f"body of {len(body)} bytes exceeds {self.max_body}")
        if len(sig) != SIG_BYTES or not hmac.compare_digest(sig, self.sign(body)):
            raise FrameError(ErrorCode.BAD_SIGNATURE, "signature does not match")
        try:
            msg = self._dec.decode(body)
        except _DECODE_ERRORS as e:
            header = self.peek_header(body)
            if header is not None and header.v != SCHEMA_VERSION:
                raise FrameError(ErrorCode.SCHEMA_VERSION, f"schema v{header.v}, this side speaks v{SCHEMA_VERSION}", header) from None
            raise FrameError(ErrorCode.BAD_MESSAGE, str(e)[:300], header) from None
        if msg.h.v != SCHEMA_VERSION:
            raise FrameError(ErrorCode.SCHEMA_VERSION, f"schema v{msg.h.v}, this side speaks v{SCHEMA_VERSION}", msg.h)
        return msg

    def peek_header(self, body: bytes) -> Header | None:
        try:
            return self._probe.decode(body).h
        except _DECODE_ERRORS:
            return None
