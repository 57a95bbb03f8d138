"""Identities, approvals and freshness in isolation (issue 21, findings 2 and 3): each principal signs
with its own credential; a frame is verified with the key of the signer it names; stale and
replayed messages are refused with typed errors; the operator's registry of approved cards and its
checksum."""

from __future__ import annotations

import time
import logging
from pathlib import Path

import msgspec
import pytest

from common import approvals, credentials
from common.config import AgentCard, ConfigError, RiskLimits
from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.freshness import Freshness
from common.schema import HeaderFactory, Ping

GW_KEY = b"g" * 32


def card(agent: str = "alpha", budget: int = 1_000_000) -> AgentCard:
    return AgentCard(
        id=agent, name=agent, strategy="x:Y", codes=["005930"], budget=budget, risk=RiskLimits(max_order_value=500_000)
    )


def test_credentials_are_private_and_per_principal(tmp_path: Path) -> None:
    path, made = credentials.issue(tmp_path, "alpha")
    assert made and (path.stat().st_mode & 0o777) == 0o600
    assert (credentials.credentials_dir(tmp_path).stat().st_mode & 0o777) == 0o700
    again, made2 = credentials.issue(tmp_path, "alpha")
    assert again == path and not made2  # kept: the agent holding it is not locked out
    a = credentials.load(tmp_path, "alpha")
    credentials.issue(tmp_path, "bravo")
    assert a.key != credentials.load(tmp_path, "bravo").key
    path.chmod(0o644)
    with pytest.raises(credentials.CredentialError, match="chmod 600"):
        credentials.load(tmp_path, "alpha")
    with pytest.raises(credentials.CredentialError, match="ktrader cards approve"):
        credentials.load(tmp_path, "charlie")
    with pytest.raises(ConfigError):
        credentials.issue(tmp_path, "../../etc/passwd")  # names are agent ids or ktrader-tools


def test_a_frame_verifies_only_under_its_signers_key(tmp_path: Path) -> None:
    credentials.issue(tmp_path, "alpha")
    credentials.issue(tmp_path, "bravo")
    ring = credentials.Keyring(tmp_path)
    gateway = Codec(GW_KEY, keyring=ring)
    alpha = Codec(GW_KEY, credential=credentials.load(tmp_path, "alpha"))
    ping = Ping(h=HeaderFactory("alpha")())
    assert gateway.decode_from(alpha.encode(ping)) == ("alpha", ping)
    # the same bytes claimed by bravo: the signature does not verify under bravo's key
    magic, _, sig, body = alpha.encode(ping)
    with pytest.raises(FrameError) as e:
        gateway.decode_from([magic, b"bravo", sig, body])
    assert e.value.code is ErrorCode.BAD_SIGNATURE
    # the gateway's own reply key (everyone has it in gateway.json) is no credential for requests
    as_gateway = Codec(GW_KEY)
    with pytest.raises(FrameError) as e:
        gateway.decode_from(as_gateway.encode(ping))
    assert e.value.code is ErrorCode.BAD_SIGNATURE
    # a revoked credential stops verifying once the folder is read again
    credentials.revoke(tmp_path, "alpha")
    ring.refresh(force=True)
    with pytest.raises(FrameError):
        gateway.decode_from(alpha.encode(Ping(h=HeaderFactory("alpha")())))
    # replies: a client checks the gateway's key
    assert alpha.decode(gateway.encode(ping)) == ping


def test_stale_and_replayed_messages_are_refused() -> None:
    now = [1_000_000_000_000]
    f = Freshness(30_000_000_000, now_ns=lambda: now[0], span=8)
    assert f.check("alpha", "s1", 1, now[0]) is None
    assert f.check("alpha", "s1", 1, now[0])[0] is ErrorCode.REPLAYED  # the same message again
    assert f.check("alpha", "s1", 3, now[0]) is None
    assert f.check("alpha", "s1", 2, now[0]) is None  # a little out of order: fine once
    assert f.check("alpha", "s1", 2, now[0])[0] is ErrorCode.REPLAYED
    assert f.check("bravo", "s1", 1, now[0]) is None  # another principal's counter
    day_old = now[0] - 24 * 3600 * 10**9
    code, text = f.check("alpha", "s2", 1, day_old)  # the finding: a 24-hour-old message
    assert code is ErrorCode.STALE_MESSAGE and "before the gateway's clock" in text
    assert f.check("alpha", "s1", 20, now[0]) is None
    assert f.check("alpha", "s1", 10, now[0])[0] is ErrorCode.REPLAYED  # below the remembered window: refused
    now[0] += 61 * 10**9  # the session goes silent for two windows: forgotten, its old ids are stale anyway
    f.check("carol", "s9", 1, now[0])
    assert ("alpha", "s1") not in f._seen


def test_freshness_in_the_codec_keeps_the_header(tmp_path: Path) -> None:
    credentials.issue(tmp_path, "alpha")
    gateway = Codec(GW_KEY, keyring=credentials.Keyring(tmp_path), freshness=Freshness(30_000_000_000))
    alpha = Codec(GW_KEY, credential=credentials.load(tmp_path, "alpha"))
    frames = alpha.encode(Ping(h=HeaderFactory("alpha")()))
    gateway.decode_from(frames)
    with pytest.raises(FrameError) as e:
        gateway.decode_from(frames)  # captured and sent again
    assert e.value.code is ErrorCode.REPLAYED and e.value.header is not None and e.value.signer == "alpha"
    old = HeaderFactory("alpha")()
    old = msgspec.structs.replace(old, ts=time.time_ns() - 3600 * 10**9)
    with pytest.raises(FrameError) as e:
        gateway.decode_from(alpha.encode(Ping(h=old)))
    assert e.value.code is ErrorCode.STALE_MESSAGE


def test_approved_cards_registry_and_checksum(tmp_path: Path) -> None:
    assert not approvals.exists(tmp_path)
    [a] = approvals.approve(tmp_path, [card()], by="test")
    assert approvals.exists(tmp_path) and credentials.credential_path(tmp_path, "alpha").exists()
    assert a.sha256 == approvals.checksum(card())
    reloaded = approvals.load(tmp_path).cards["alpha"]
    assert reloaded.card == card() and reloaded.by == "test"
    raised = card(budget=65_000_000)  # the agent edits its own card
    assert approvals.checksum(raised) != a.sha256
    assert approvals.differences(card(), raised) == ["budget 1,000,000 → 65,000,000"]
    # the registry file edited by hand (a budget raised without the operator's tools) is refused whole
    path = approvals.registry_path(tmp_path)
    path.write_text(path.read_text().replace('"budget": 1000000', '"budget": 65000000'))
    with pytest.raises(ConfigError, match="checksum"):
        approvals.load(tmp_path)
    seen = approvals.ApprovedCards(tmp_path)
    assert seen.get("alpha") is None and "checksum" in seen.error  # nothing is approved then
    with pytest.raises(ConfigError, match="reserved"):
        approvals.approve(tmp_path, [card("external")], by="test")


def test_an_approval_from_an_older_version_survives_a_new_card_field(tmp_path: Path) -> None:
    """Approved by a ktrader whose cards had fewer fields (its checksum covered every field then): the
    upgrade neither refuses the registry nor the agent's unchanged card; a hand edit is still caught."""
    import hashlib

    old_card = msgspec.to_builtins(card())
    del old_card["resend_within_s"]  # a field this version added, with its default
    sha = hashlib.sha256(msgspec.json.encode(old_card, order="sorted")).hexdigest()
    path = approvals.registry_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"card": old_card, "sha256": sha, "by": "older", "ts_ns": 1}
    path.write_bytes(msgspec.json.encode({"version": 1, "cards": {"alpha": entry}}))
    a = approvals.load(tmp_path).cards["alpha"]
    assert a.card == card() and a.sha256 == approvals.checksum(card())  # what a registration compares
    path.write_text(path.read_text().replace('"budget":1000000', '"budget":65000000'))
    with pytest.raises(ConfigError, match="checksum"):
        approvals.load(tmp_path)


def test_a_credential_readable_by_others_is_said_made_private_at_start_and_taken_up_once_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(a hunt) A folder restored with its credential files 0644: the gateway skipped them untold, and after the
    operator's `chmod 600` still did not take them up (a chmod changes no folder mtime): every tool and agent timed
    out as 'busy or stuck?'. The skip is said; a mode change is seen; the gateway's start makes them private."""
    path, _ = credentials.issue(tmp_path, "alpha")
    key = credentials.load(tmp_path, "alpha").key
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ktrader.credentials"):
        ring = credentials.Keyring(tmp_path, every_s=0.0)
    assert ring("alpha") is None
    assert any(
        "credential of alpha not used" in r.getMessage() and "chmod 600" in r.getMessage() for r in caplog.records
    )
    path.chmod(0o600)  # the operator's fix
    ring.refresh()
    assert ring("alpha") == key
    path.chmod(0o644)
    assert credentials.tighten_credentials(tmp_path) == [path]
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_ipc_socket_in_use_is_seen_and_a_stale_one_is_free(tmp_path: Path) -> None:
    import socket

    from server.run_folder import ipc_in_use

    path = tmp_path / "r.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    assert ipc_in_use(f"ipc://{path}")
    listener.close()  # its process died: the file stays, nobody listens
    assert path.exists() and not ipc_in_use(f"ipc://{path}")
    assert not ipc_in_use(f"ipc://{tmp_path / 'none.sock'}") and not ipc_in_use("tcp://127.0.0.1:1")
