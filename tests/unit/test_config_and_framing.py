"""Cards and configs: unknown keys refused, every problem named with file and field. Framing:
round trips, signatures, schema versions."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from common.config import AgentCard, ConfigError, GatewayConfig, decode_toml, json_schema, load_card
from common.connection import GatewayInfo, read_info, write_info
from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.ids import IdError, check_stock_code, make_client_order_id, parse_client_order_id
from common.schema import (
    SCHEMA_VERSION,
    Header,
    HeaderFactory,
    NewOrder,
    Ping,
    Published,
    SubmitOrders,
    TradeTick,
    trade_topic,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD = 'id = "ma"\nname = "x"\nstrategy = "agent.strategies.ma_cross:MaCross"\ncodes = ["005930"]\n'


def test_sample_cards_load() -> None:
    cards = sorted((ROOT / "cards").glob("*.toml"))
    assert cards
    for p in cards:
        card = load_card(p)
        assert card.id == p.stem


@pytest.mark.parametrize(
    "text,where",
    [
        (GOOD + "colour = 'red'\n", "unknown field `colour`"),
        (GOOD.replace('"ma"', '"Bad-Id"'), "$.id"),
        (GOOD.replace('"005930"', '"5930"'), "$.codes[0]"),
        (GOOD.replace("agent.strategies.ma_cross:MaCross", "no_colon"), "$.strategy"),
        (GOOD + "budget = -5\n", "$.budget"),
        (GOOD + "mode = 'yolo'\n", "$.mode"),
        (GOOD + "[risk]\nmax_order_value = 1.5\n", "$.risk.max_order_value"),
        (GOOD + "[schedule]\nstart = '25:00'\n", "$.schedule.start"),
        # nonsense that passed: a negative quota removed the agent's cap, NaN and inf were approved then refused; an end
        # before the start left an agent that could never buy
        (GOOD + "rate_quota_per_s = -1.0\n", "$.rate_quota_per_s"),
        (GOOD + "rate_quota_per_s = nan\n", "$.rate_quota_per_s"),
        (GOOD + "rate_quota_per_s = inf\n", "$.rate_quota_per_s"),
        (GOOD + "[schedule]\nstart = '15:00'\nend = '09:30'\n", "schedule end 09:30 is not after its start 15:00"),
        ("id = ", "not valid TOML"),
    ],
)
def test_bad_cards_are_named(text: str, where: str, tmp_path: Path) -> None:
    p = tmp_path / "card.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_card(p)
    assert str(p) in str(e.value) and where in str(e.value)


def test_duplicate_codes_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(GOOD.replace('["005930"]', '["005930", "005930"]'))
    with pytest.raises(ConfigError, match="twice"):
        load_card(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_card(tmp_path / "missing.toml")


def test_gateway_config_and_schema() -> None:
    cfg = decode_toml('[broker]\nenv = "paper"\n[risk]\nmax_open_orders = 10\n', GatewayConfig)
    assert cfg.broker.env.value == "paper" and cfg.risk.max_open_orders == 10
    with pytest.raises(ConfigError, match="unknown field"):
        decode_toml("[broker]\nappkey = 'x'\n", GatewayConfig)
    schema = json_schema(AgentCard)
    assert "AgentCard" in str(schema)


def test_ids() -> None:
    import datetime as dt

    c = make_client_order_id("ma_cross", dt.date(2026, 11, 20), 7)
    assert c == "ma_cross-20261120-7" and parse_client_order_id(c) == ("ma_cross", dt.date(2026, 11, 20), 7)
    with pytest.raises(IdError):
        parse_client_order_id("ma_cross-2026-7")
    assert check_stock_code("0009K0") == "0009K0"
    with pytest.raises(IdError):
        check_stock_code("00593")


def test_codec_round_trip_and_errors() -> None:
    codec = Codec(os.urandom(32))
    hf = HeaderFactory("ma")
    msg = SubmitOrders(
        h=hf(), orders=[NewOrder(client_order_id="ma-20261120-1", code="005930", side="buy", qty=1, price=70000)]
    )
    assert codec.decode(codec.encode(msg)) == msg
    other = Codec(os.urandom(32))
    with pytest.raises(FrameError) as e:
        other.decode(codec.encode(msg))
    assert e.value.code is ErrorCode.BAD_SIGNATURE
    # a validation failure inside a well-formed message is BAD_MESSAGE and keeps the header
    bad = msgspec.msgpack.encode(
        {"t": "submit", "h": list(msgspec.to_builtins(hf())), "orders": [{"client_order_id": "x"}]}
    )
    with pytest.raises(FrameError) as e:
        codec.decode([*codec.sign_request(bad), bad])
    assert e.value.code is ErrorCode.BAD_MESSAGE and e.value.header is not None
    h = hf()
    newer = codec.encode_body(Ping(h=Header(h.mid, h.sender, h.sid, h.ts, SCHEMA_VERSION + 1)))
    with pytest.raises(FrameError) as e:
        codec.decode([*codec.sign_request(newer), newer])
    assert e.value.code is ErrorCode.SCHEMA_VERSION


def test_pub_message_is_one_frame_led_by_its_topic() -> None:
    key = os.urandom(32)
    codec = Codec(key)
    token = codec.publisher_token("gw-session-1")
    codec.expect_publisher("gw-session-1")
    pub = Published(
        topic=trade_topic("005930"),
        seq=7,
        body=TradeTick(code="005930", time="090000", price=70_000, qty=3, side=1, cum_volume=10),
    )

    def frame(topic: str, body: bytes, tok: bytes = token) -> bytes:
        return codec.encode_pub(topic.encode(), body, tok)

    blob = frame(pub.topic, codec.encode_body(pub))
    assert blob.startswith(b"md.H0STCNT0.005930.\0KP3")  # a SUB's prefix filter sees the topic first
    assert codec.decode_pub(blob) == pub
    head = len(pub.topic) + 1
    other = codec.encode_body(msgspec.structs.replace(pub, topic=trade_topic("000660")))
    long_topic = "md." + "a" * 200 + "."  # would decode but for the cap on a topic's length
    long_body = codec.encode_body(msgspec.structs.replace(pub, topic=long_topic))
    for bad, code, why in (
        # not the expected gateway: a token made without the key, another gateway process's token
        # (a restarted gateway, or frames recorded from an earlier one), the same under another key
        (blob[: head + 3] + b"\x00" * 16 + blob[head + 19 :], ErrorCode.BAD_SIGNATURE, "publisher token"),
        (
            frame(pub.topic, codec.encode_body(pub), codec.publisher_token("gw-session-0")),
            ErrorCode.BAD_SIGNATURE,
            "publisher token",
        ),
        (
            frame(pub.topic, codec.encode_body(pub), Codec(os.urandom(32)).publisher_token("gw-session-1")),
            ErrorCode.BAD_SIGNATURE,
            "publisher token",
        ),
        (blob[:head] + b"XX" + blob[head + 2 :], ErrorCode.BAD_MESSAGE, "magic"),
        (blob[: head + 3], ErrorCode.BAD_SIGNATURE, "publisher token"),
        (b"md." + b"x" * 200, ErrorCode.BAD_MESSAGE, "no topic terminator"),
        (b"", ErrorCode.BAD_MESSAGE, "no topic terminator"),
        (frame(long_topic, long_body), ErrorCode.BAD_MESSAGE, "no topic terminator"),
        # a body under another topic's prefix: a subscriber would file it wrongly
        (frame(pub.topic, other), ErrorCode.BAD_MESSAGE, "does not match"),
        # a message that is not a publication
        (
            frame(pub.topic, codec.encode_body(Ping(h=HeaderFactory("gateway")()))),
            ErrorCode.BAD_MESSAGE,
            "Expected `array`",
        ),
        # another schema version, this layout or a future one: named as such
        (
            frame(pub.topic, codec.encode_body(msgspec.structs.replace(pub, v=SCHEMA_VERSION + 1))),
            ErrorCode.SCHEMA_VERSION,
            f"v{SCHEMA_VERSION + 1}",
        ),
        (
            frame(pub.topic, codec.encode_body(["pub", SCHEMA_VERSION + 1, {"new": "layout"}])),
            ErrorCode.SCHEMA_VERSION,
            f"v{SCHEMA_VERSION + 1}",
        ),
        # absurd nesting in an unknown field: a typed error, not a RecursionError
        (frame(pub.topic, b"\x81\xa1x" + b"\x91" * 100_000 + b"\x00"), ErrorCode.BAD_MESSAGE, ""),
    ):
        with pytest.raises(FrameError) as e:
            codec.decode_pub(bad)
        assert e.value.code is code and why in e.value.message, (e.value.code, e.value.message)
    fresh = Codec(key)  # a subscriber that has not learnt its gateway's session trusts no publisher
    with pytest.raises(FrameError) as e:
        fresh.decode_pub(blob)
    assert e.value.code is ErrorCode.BAD_SIGNATURE
    with pytest.raises(FrameError) as e:  # the ROUTER path has the same guard
        deep = b"\x81\xa1x" + b"\x91" * 100_000 + b"\x00"
        codec.decode([*codec.sign_request(deep), deep])
    assert e.value.code is ErrorCode.BAD_MESSAGE


def test_connection_file_is_private(tmp_path: Path) -> None:
    info = GatewayInfo(router="ipc:///x", pub="ipc:///y", key="ab" * 32, pid=1, session="s" * 32, started_ns=1)
    p = write_info(tmp_path, info)
    assert p.stat().st_mode & 0o777 == 0o600
    assert read_info(tmp_path) == info
    assert "abab" not in repr(info)
