"""CURVE key files (common/curve.py): modes, what is refused and why, and a client's refusal to dial
a network endpoint without keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.client import GatewayClient
from common.credentials import Credential
from common import curve
from common.connection import GatewayInfo


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_init_writes_private_files_and_keeps_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    made = curve.init_gateway(run)
    assert set(made) == {
        curve.gateway_secret_path(run),
        curve.signing_path(run),
        curve.client_secret_path(run, curve.TOOLS),
    }
    assert mode(curve.keys_dir(run)) == mode(curve.clients_dir(run)) == 0o700
    assert mode(curve.gateway_secret_path(run)) == mode(curve.signing_path(run)) == 0o600
    assert mode(curve.client_secret_path(run, curve.TOOLS)) == 0o600
    pair, sign = curve.gateway_pair(run), curve.signing_key(run)
    assert len(pair.public) == 40 and len(sign) == 32 and "secret" not in repr(pair).replace("secret=", "")
    assert curve.init_gateway(run) == []  # a second init keeps every key
    assert curve.gateway_pair(run) == pair and curve.signing_key(run) == sign
    curve.init_gateway(run, force=True)
    assert curve.gateway_pair(run).public != pair.public and curve.signing_key(run) != sign


def test_client_keys_named_by_agent_id(tmp_path: Path) -> None:
    curve.make_client(tmp_path, "alpha")
    with pytest.raises(curve.CurveError, match="--force"):
        curve.make_client(tmp_path, "alpha")
    for bad in ("Alpha", "a-b", "../x", "x"):
        with pytest.raises(curve.CurveError, match="not an agent id"):
            curve.make_client(tmp_path, bad)
    pair = curve.client_pair(tmp_path, "alpha")
    assert pair.name == "alpha" and curve.authorised_clients(tmp_path) == {pair.public: "alpha"}
    assert curve.revoke_client(tmp_path, "alpha") and curve.authorised_clients(tmp_path) == {}
    with pytest.raises(curve.CurveError, match="ktrader keys agent alpha"):
        curve.client_pair(tmp_path, "alpha")


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    curve.init_gateway(tmp_path)
    curve.gateway_secret_path(tmp_path).chmod(0o644)
    with pytest.raises(curve.CurveError, match="chmod 600"):
        curve.gateway_pair(tmp_path)
    curve.signing_path(tmp_path).chmod(0o640)
    with pytest.raises(curve.CurveError, match="chmod 600"):
        curve.signing_key(tmp_path)


def test_gateway_preflight_and_client_without_keys(tmp_path: Path) -> None:
    curve.check_gateway_keys(tmp_path, "ipc:///x/router", "")  # ipc needs nothing
    with pytest.raises(curve.CurveError, match="ktrader keys init"):
        curve.check_gateway_keys(tmp_path, "tcp://127.0.0.1:5555", "ipc:///x/pub")
    info = GatewayInfo(
        router="tcp://127.0.0.1:9", pub="tcp://127.0.0.1:9", key="ab" * 32, pid=1, session="s" * 8, started_ns=0
    )
    cred = Credential("alpha", b"k" * 32)
    with pytest.raises(curve.CurveError, match="needs its CURVE key pair"):
        GatewayClient(info, "alpha", credential=cred)
    curve.make_client(tmp_path, "alpha")
    with pytest.raises(curve.CurveError, match="names no CURVE key"):
        GatewayClient(info, "alpha", keys=curve.client_pair(tmp_path, "alpha"), credential=cred)
    assert curve.client_pair_for(tmp_path, "nobody", "ipc:///r", "ipc:///p") is None


def test_reset_keeps_the_keys_and_ignores_an_exported_gateway_json(tmp_path: Path) -> None:
    from common.connection import write_info
    from tools.ops.reset import archive_run_dir

    run = tmp_path / "run"
    curve.init_gateway(run)
    (run / "db").mkdir()
    # a remote agent's run folder holds an exported gateway.json that names no local process (pid 0)
    write_info(
        run,
        GatewayInfo(
            router="tcp://10.0.0.5:5555",
            pub="tcp://10.0.0.5:5556",
            key="ab" * 32,
            pid=0,
            session="exported",
            started_ns=0,
            curve_key="x" * 40,
        ),
    )
    dest = archive_run_dir(run)
    assert dest is not None and (dest / "db").exists() and (dest / "gateway.json").exists()
    assert curve.gateway_pair(run).public  # still there
    assert sorted(p.name for p in run.iterdir()) == ["keys"]


def test_a_pair_cut_short_is_written_again_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(a hunt) `keys init` cut short between a pair's two files left the secret without its public half: taken as
    done ever after, the tools' key (whose public half the gateway authorises) refused for good. The public half is
    written first: a pair without its secret is written again whole."""
    run = tmp_path / "run"
    real = curve._write
    written: list[Path] = []

    def cut_short(path: Path, text: str, mode: int) -> None:
        if path.parent == curve.clients_dir(run):
            if written:  # the process ends between the tools' pair's two files
                raise KeyboardInterrupt
            written.append(path)
        real(path, text, mode)

    monkeypatch.setattr(curve, "_write", cut_short)
    with pytest.raises(KeyboardInterrupt):
        curve.init_gateway(run)
    monkeypatch.setattr(curve, "_write", real)
    curve.init_gateway(run)  # again: whatever is missing is written
    assert curve.client_secret_path(run, curve.TOOLS).exists() and curve.client_public_path(run, curve.TOOLS).exists()
