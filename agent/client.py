"""The agent's connection to the gateway: a DEALER for requests/replies/own events and a SUB for
market data. Replies are matched to requests by id (header.re), so a lost reply never wedges the
socket; everything that is not the awaited reply is queued for the runtime."""

from __future__ import annotations

import time
from collections import deque

import zmq

from common.connection import GatewayInfo
from common.errors import ErrorCode, KtraderError
from common.framing import Codec, FrameError
from common.schema import REPLY_TO, Error, HeaderFactory, Message, Published


class GatewayClient:
    def __init__(self, info: GatewayInfo, sender: str, headers: HeaderFactory | None = None,
                 ctx: zmq.Context | None = None, subscribe: bool = True) -> None:
        self.info = info
        self.ctx = ctx or zmq.Context.instance()
        self.codec = Codec(info.key_bytes)
        self.headers = headers or HeaderFactory(sender)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(info.router)
        self.sub: zmq.Socket | None = None
        if subscribe:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 100_000)
            self.sub.connect(info.pub)
        self.inbox: deque[Message] = deque()
        self.bad_frames = 0

    def close(self) -> None:
        self.dealer.close(0)
        if self.sub is not None:
            self.sub.close(0)

    # ---- DEALER -------------------------------------------------------------------------------

    def send(self, msg: Message) -> int:
        self.dealer.send_multipart(self.codec.encode(msg))
        return msg.h.mid

    def recv_nowait(self) -> Message | None:
        """One decoded message from the DEALER, or None when nothing is waiting."""
        while True:
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                return self.codec.decode(frames)
            except FrameError:
                self.bad_frames += 1  # not from our gateway (or corrupted): ignore, keep reading

    def request(self, msg: Message, timeout_s: float = 5.0) -> Message:
        """Send and wait for the reply to this message; other messages are kept in `inbox`.
        Raises KtraderError(TIMEOUT) when no reply arrives in time."""
        mid = self.send(msg)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KtraderError(ErrorCode.TIMEOUT, f"no reply to {type(msg).__name__} within {timeout_s}s")
            if not self.dealer.poll(int(left * 1000) + 1, zmq.POLLIN):
                continue
            while (reply := self.recv_nowait()) is not None:
                if reply.h.re == mid:
                    return reply
                self.inbox.append(reply)

    def call(self, msg: Message, timeout_s: float = 5.0) -> Message:
        """request() that raises KtraderError for an Error reply, or for a reply of another type than
        the request's own (common.schema.REPLY_TO)."""
        reply = self.request(msg, timeout_s)
        if isinstance(reply, Error):
            raise KtraderError(reply.code, reply.message)
        expected = REPLY_TO.get(type(msg))
        if expected is not None and not isinstance(reply, expected):
            raise KtraderError(ErrorCode.BAD_MESSAGE, f"{type(msg).__name__} got {type(reply).__name__}, "
                                                      f"expected {expected.__name__}")
        return reply

    # ---- SUB ----------------------------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        assert self.sub is not None
        self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def recv_pub_nowait(self) -> Published | None:
        assert self.sub is not None
        while True:
            try:
                blob = self.sub.recv(zmq.NOBLOCK)  # one frame per message (see Codec.encode_pub)
            except zmq.Again:
                return None
            try:
                return self.codec.decode_pub(blob)
            except FrameError:
                self.bad_frames += 1
