"""`ktrader gateway` start-up failures explain themselves: one or two plain lines (what failed,
which host, the reason, what to check), a documented exit code, no traceback; transient failures
are retried with a visible countdown; a restart within a minute of failed connects does not wait
for the one-token-a-minute rule. Real processes: the gateway, a KIS twin process, a local TLS server."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.client import GatewayClient
from common.clock import today_kst
from common.config import AgentCard
from common.enums import Side, TimeInForce
from common.errors import ErrorCode
from common.ids import make_client_order_id
from common.schema import NewOrder, OrderResult, OrdersReply, Register, Registered, StatusReply, SubmitOrders
from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID, credentials_env
from kis.startup import StartExit
from tests.conftest import ROOT, Procs, agent_client, start_gateway_on_twin, wait_for
from tools.ops.procs import child_env, ktrader_cmd, stop_groups, twin_args
from tools.ops.status import fetch_status, recon_line

pytestmark = pytest.mark.integration

FAKE = {ENV_APP_KEY: "PS" + "k" * 34, ENV_APP_SECRET: "s" * 180, ENV_ACCOUNT: "12345678-01", ENV_HTS_ID: "someone"}


def gateway(tmp: Path, toml: str, env: dict[str, str] | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "gateway.toml"
    cfg.write_text(toml)
    e = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    e.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "gateway", "--config", str(cfg), "--run-dir", str(tmp / "run"), *args],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=90,
    )


def error_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    """What the operator reads at the end: the error line and its hint (log lines come before)."""
    lines = out.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[first:]


def assert_explained(
    out: subprocess.CompletedProcess[str], code: StartExit, *needles: str, max_lines: int = 15
) -> list[str]:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr
    err = error_lines(out)
    assert 1 <= len(err) <= 2 and err[-1].startswith("  check: "), err
    text = " ".join(err)
    for n in needles:
        assert n in text, (n, err)
    assert len(out.stderr.splitlines()) <= max_lines, out.stderr  # a few log lines and the message, not pages
    return err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_credentials(tmp_path: Path) -> None:
    out = gateway(tmp_path, '[broker]\nenv = "paper"\n')
    err = assert_explained(out, StartExit.CREDENTIALS, "missing app_key, app_secret, account, hts_id", ENV_APP_KEY)
    assert "credentials_file" in err[1]


def test_malformed_account(tmp_path: Path) -> None:
    out = gateway(tmp_path, '[broker]\nenv = "real"\n', {**FAKE, ENV_ACCOUNT: "1234"})
    assert_explained(out, StartExit.CREDENTIALS, "CANO-ACNT_PRDT_CD")


def test_refused_connection_is_retried_then_explained(tmp_path: Path) -> None:
    port = free_port()
    toml = (
        f'[broker]\nenv = "paper"\nrest_url = "https://127.0.0.1:{port}"\nws_url = "ws://127.0.0.1:{port}"\n'
        "start_retries = 2\nstart_backoff_s = 0.2\n"
    )
    out = gateway(tmp_path, toml, FAKE)
    assert_explained(
        out,
        StartExit.UNREACHABLE,
        f"127.0.0.1:{port}",
        "connection refused",
        "gave up after 3 attempts",
        f"outbound port {port}",
    )
    # the retries were visible while they happened, and the first lines said which KIS this is
    assert "retry 1 of 2 in 0.2 s" in out.stderr and "retry 2 of 2 in 0.4 s" in out.stderr
    head = "\n".join(out.stderr.splitlines()[:4])
    assert "broker environment: paper" in head and f"KIS paper: REST https://127.0.0.1:{port}" in head, head
    assert "account 12******-01, HTS id so*****" in head and "12345678" not in out.stderr, head
    assert "someone" not in out.stderr  # (the HTS id is masked as the account is)


# --- TLS: a local HTTPS server whose certificate comes from a CA nobody trusts --------------------


def _make_ca_and_leaf(tmp: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ktrader test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_pem, cert_pem, key_pem


class _RefusingKis(http.server.BaseHTTPRequestHandler):
    """Answers every POST as KIS answers an unknown app key on /oauth2/tokenP."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps({"error_description": "유효하지 않은 AppKey입니다.", "error_code": "EGW00103"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca_pem, cert_pem, key_pem = _make_ca_and_leaf(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingKis)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_pem, key_pem)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1], ca_pem
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_tls_failure_names_the_cause_and_ca_bundle_fixes_it(tmp_path: Path, tls_server: tuple[int, Path]) -> None:
    port, ca_pem = tls_server
    toml = f'[broker]\nenv = "real"\nrest_url = "https://127.0.0.1:{port}"\nstart_retries = 3\nstart_backoff_s = 5\n'
    out = gateway(tmp_path, toml, FAKE)
    # an untrusted certificate is a set-up problem: explained at once, not retried
    assert_explained(out, StartExit.UNREACHABLE, f"127.0.0.1:{port}", "CERTIFICATE_VERIFY_FAILED", "broker.ca_bundle")
    assert "retry" not in out.stderr
    # trusting the CA lets TLS through: now KIS's answer (an unknown app key) is what the operator reads
    out = gateway(tmp_path, toml + f'ca_bundle = "{ca_pem}"\n', FAKE)
    assert_explained(out, StartExit.REFUSED, "KIS refused", "EGW00103", "KTRADER_KIS_APP_KEY")
    assert f"TLS trust: default + {ca_pem}" in out.stderr
    # a bundle that is not there is a configuration error
    out = gateway(tmp_path, toml + f'ca_bundle = "{tmp_path / "nope.pem"}"\n', FAKE)
    assert_explained(out, StartExit.CONFIG, "no such file")


# --- against a KIS twin process -------------------------------------------------------------------


def start_twin(procs: Procs, tmp: Path) -> dict[str, str]:
    log = open(tmp / "twin.err", "wb")
    p = subprocess.Popen(
        ktrader_cmd(*twin_args(5, "--tick-interval", "0")),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        env=child_env(),
        start_new_session=True,
    )
    procs.procs.append(p)
    return json.loads(p.stdout.readline())  # type: ignore[union-attr]


def test_token_refused(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path)
    toml = f'[broker]\nenv = "sim"\nrest_url = "{info["rest_url"]}"\nws_url = "{info["ws_url"]}"\n'
    out = gateway(tmp_path, toml, {**credentials_env(info), ENV_APP_SECRET: "not-the-secret"})
    assert_explained(out, StartExit.REFUSED, "token issuance refused", "EGW00105", "KTRADER_KIS_APP_SECRET")
    # a paper key on the real domain: KIS's EGW02004, and the hint says which env to set
    paper = {
        **credentials_env(info),
        ENV_APP_KEY: info["paper_app_key"],
        ENV_APP_SECRET: info["paper_app_secret"],
        ENV_ACCOUNT: info["paper_account"],
    }
    out = gateway(tmp_path, toml, paper)
    assert_explained(out, StartExit.REFUSED, "EGW02004", 'broker.env = "paper"')


def test_restart_within_a_minute_after_failed_connects_does_not_stall(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path)
    creds = credentials_env(info)
    port = free_port()
    down = (
        f'[broker]\nenv = "sim"\nrest_url = "http://127.0.0.1:{port}"\nws_url = "ws://127.0.0.1:{port}"\n'
        "start_retries = 1\nstart_backoff_s = 0.1\n"
    )
    out = gateway(tmp_path, down, creds)
    assert out.returncode == StartExit.UNREACHABLE, out.stderr  # two token attempts that never reached KIS
    # KIS (the twin) is reachable now: the same key and run directory start at once, no minute's wait
    cfg = tmp_path / "up.toml"
    cfg.write_text(f'[broker]\nenv = "sim"\nrest_url = "{info["rest_url"]}"\nws_url = "{info["ws_url"]}"\n')
    run = tmp_path / "run"
    t0 = time.monotonic()
    gw = procs.start("gateway", "--config", str(cfg), "--run-dir", str(run), log_name="gateway", env=creds)
    wait_for(lambda: (run / "gateway.json").exists(), 25, what="gateway up")
    assert time.monotonic() - t0 < 25
    assert "one token issuance per minute" not in procs.log(gw)
    assert gw.poll() is None


# --- the stock master of a paper/real gateway: downloaded, kept, explained -------------------------


def _paper(info: dict[str, str], master_url: str) -> tuple[str, dict[str, str]]:
    toml = (
        f'master_url = "{master_url}"\n[broker]\nenv = "paper"\nrest_url = "{info["paper_rest_url"]}"\n'
        f'ws_url = "{info["ws_url"]}"\nstart_retries = 0\n'
    )
    env = {
        **credentials_env(info),
        ENV_APP_KEY: info["paper_app_key"],
        ENV_APP_SECRET: info["paper_app_secret"],
        ENV_ACCOUNT: info["paper_account"],
    }
    return toml, env


def _start_paper(
    procs: Procs, tmp: Path, info: dict[str, str], master_url: str, log_name: str = "gateway"
) -> tuple[Path, subprocess.Popen[bytes]]:
    """A paper gateway on the twin's paper flavour, up (gateway.json written): (run dir, process)."""
    toml, env = _paper(info, master_url)
    cfg = tmp / "paper.toml"
    cfg.write_text(toml)
    run = tmp / "run"
    gw = procs.start("gateway", "--config", str(cfg), "--run-dir", str(run), log_name=log_name, env=env)
    wait_for(lambda: (run / "gateway.json").exists(), 30, what="gateway up")
    return run, gw


def _registered(run: Path, card: AgentCard) -> tuple[GatewayClient, int, dt.date]:
    """A client speaking as `card`'s agent, registered: (client, its next order number, the gateway's
    trading day: its order numbers' day)."""
    client = agent_client(run, card)
    reg = client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="test"), 10)
    assert isinstance(reg, Registered), reg
    return client, reg.snapshot.next_order_n, dt.datetime.strptime(reg.snapshot.day, "%Y%m%d").date()


def _order(client: GatewayClient, agent: str, n: int, code: str, price: int, day: dt.date) -> OrderResult:
    reply = client.request(
        SubmitOrders(
            h=client.headers(),
            orders=[
                NewOrder(
                    client_order_id=make_client_order_id(agent, day, n),
                    code=code,
                    side=Side.BUY,
                    qty=1,
                    price=price,
                    tif=TimeInForce.NEXT_SESSION,  # held whatever the wall clock's phase: the price rules still apply
                )
            ],
        ),
        10,
    )
    assert isinstance(reply, OrdersReply), reply
    return reply.results[0]


def test_paper_gateway_downloads_the_stock_master_and_judges_etfs_by_it(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path)
    run, gw = _start_paper(procs, tmp_path, info, f"{info['paper_rest_url']}/common/master")
    st = wait_for(lambda: (s := fetch_status(run)).synced and s, 30, what="first reconciliation")  # type: ignore[assignment]
    assert st.stock_master.startswith(f"KIS master of {today_kst().isoformat()}"), st.stock_master
    assert (run / "master" / "kospi_code.mst").exists() and "stock master downloaded" in procs.log(gw)
    card = AgentCard(id="etf", name="etf", strategy="x:Y", codes=["069500", "005930"], budget=10_000_000)
    client, n, day = _registered(run, card)
    # KODEX 200 at 35,105: the ETF's 5-won grid (a stock there has a 50-won tick); judged as a stock
    # without the master, it was DENIED_TICK
    etf = _order(client, "etf", n, "069500", 35_105, day)
    assert etf.accepted, etf
    stock = _order(client, "etf", n + 1, "005930", 70_050, day)  # the stock grid is still enforced
    assert not stock.accepted and stock.code is ErrorCode.DENIED_TICK, stock
    client.close()
    stop_groups([gw], grace_s=10)
    # days later, KIS's download host unreachable: the old copy serves at once, a person is told
    stamp = run / "master" / "downloaded.json"
    old = (today_kst() - dt.timedelta(days=4)).isoformat()
    stamp.write_text(stamp.read_text().replace(today_kst().isoformat(), old))
    dead = f"http://127.0.0.1:{free_port()}/common/master"
    run, gw = _start_paper(procs, tmp_path, info, dead, log_name="gateway2")
    assert gw.poll() is None  # up on the old copy

    def alerted() -> StatusReply | None:
        got = fetch_status(run)
        return got if any("stock master copy is 4 days old" in a for a in got.alerts) else None

    st = wait_for(alerted, 20, what="the stale copy alerted")
    assert st.stock_master.startswith(f"KIS master of {old}"), st.stock_master  # type: ignore[union-attr]
    assert st.counters["master_download_failures"] >= 1 and "refresh failing" in st.stock_master  # type: ignore[union-attr]
    stop_groups([gw], grace_s=10)
    # a first start (no copy) that cannot download: two plain lines, exit 5, nothing served
    (tmp_path / "fresh").mkdir()
    # (a new folder holds no token, and the twin, as KIS, answers one a minute per key: the starts above
    # took this minute's; without this the start waited ~60 s for it)
    httpx.post(f"{info['admin_url']}/admin/faults/expire-tokens", json={"reset_throttle": True}, timeout=10)
    out = gateway(tmp_path / "fresh", *_paper(info, dead))
    # (after KIS itself answered: its session's lines come first)
    assert_explained(out, StartExit.UNREACHABLE, "KIS stock master", "cannot download", "master_dir", max_lines=20)
    assert not (tmp_path / "fresh" / "run" / "gateway.json").exists()


def test_a_paper_gateway_takes_orders_before_it_has_read_the_days_whole_order_list(
    tmp_path: Path, procs: Procs
) -> None:
    """A start late in a busy day on a paper account (15 rows a page at 2 requests/s): the first
    reconciliation reads KIS's unfilled list only, so an agent's order is taken while the whole list
    (45 orders, 3 pages: with the balance, 2 s or more at that pace) is still being read; the whole
    pass then adopts every order of the day."""
    info = start_twin(procs, tmp_path)
    admin = httpx.Client(base_url=info["admin_url"], timeout=10)
    lower = admin.get("/admin/book/005930").json()["lower"]
    for i in range(45):  # placed in the HTS app before the gateway starts: 3 rest, the others fill
        body = {"account": info["paper_account"], "code": "005930", "side": "buy", "qty": 1}
        body.update({"price": lower} if i % 20 == 0 else {"ord_dvsn": "01", "price": 0})
        admin.post("/admin/orders", json=body).raise_for_status()
    run, gw = _start_paper(procs, tmp_path, info, f"{info['paper_rest_url']}/common/master")
    wait_for(lambda: fetch_status(run).synced, 30, what="the first (open orders) pass")
    client, n, day = _registered(
        run, AgentCard(id="early", name="early", strategy="x:Y", codes=["005930"], budget=10**7)
    )
    res = _order(client, "early", n, "005930", lower, day)
    assert res.accepted, res
    log = procs.log(gw)
    assert "reconciled (start): 3 open orders at the broker" in log, log
    assert "reconciled (start, the whole day)" not in log  # taken before the whole list was read
    assert not fetch_status(run).reconciled_whole
    client.close()
    st = wait_for(lambda: (s := fetch_status(run)).reconciled_whole and s, 60, what="the whole day's list")
    assert "reconciled (start, the whole day): 45 orders at the broker" in procs.log(gw)
    assert "synced" in (line := recon_line(st)) and "open orders only" not in line  # type: ignore[arg-type]


def test_a_lost_fill_notice_is_found_before_the_next_slow_whole_pass(tmp_path: Path, procs: Procs) -> None:
    """A busy day on a slow order list (200 orders, 100 rows a page, at 2 requests/s: a whole pass takes
    2 s or more, so whole passes are spaced 18 s or more apart) and a fill notice that never arrives (KIS
    paper does that): the unfilled list, read every reconcile_s between whole passes, shows the order
    gone, and the whole list is read at once, before the next spaced-out whole pass is due."""
    info = start_twin(procs, tmp_path)
    admin = httpx.Client(base_url=info["admin_url"], timeout=10)
    book = admin.get("/admin/book/005930").json()
    for _ in range(200):  # the day so far: placed in the HTS app, filled
        body = {"account": info["account"], "code": "005930", "side": "buy", "qty": 1, "ord_dvsn": "01", "price": 0}
        admin.post("/admin/orders", json=body).raise_for_status()
    run, gw = start_gateway_on_twin(
        procs, tmp_path, info, broker_toml="rate_per_s = 2.0\n", gateway_toml="reconcile_s = 1.0\n"
    )
    wait_for(lambda: fetch_status(run).reconciled_whole, 60, what="the whole list read once")
    wait_for(lambda: fetch_status(run).counters.get("reconcile_stretched"), 30, what="whole passes spaced out")
    spaced_out = time.monotonic()
    stretched = re.search(r"reconciliation took [\d.]+s: the next whole pass in (\d+)s", procs.log(gw))
    assert stretched, procs.log(gw)
    next_whole_s = int(stretched[1])  # (counted from the end of that pass, before `spaced_out`)
    admin.post("/admin/faults/notices", json={"lose_fills": True}).raise_for_status()
    client, n, day = _registered(run, AgentCard(id="lost", name="lost", strategy="x:Y", codes=["005930"], budget=10**7))
    new = NewOrder(
        client_order_id=make_client_order_id("lost", day, n),
        code="005930",
        side=Side.BUY,
        qty=1,
        price=book["asks"][0][0],  # marketable: fills at once at the twin; its fill notice is lost
    )
    reply = client.request(SubmitOrders(h=client.headers(), orders=[new]), 10)
    assert isinstance(reply, OrdersReply) and reply.results[0].accepted, reply

    def filled() -> StatusReply | None:
        st = fetch_status(run)
        return st if any(a.id == "lost" and a.fills for a in st.agents) else None

    # repaired before the next spaced-out whole pass is due (a second's slack for its log line's rounding)
    before_next = next_whole_s - 1 - (time.monotonic() - spaced_out)
    st = wait_for(filled, before_next, what=f"the lost fill repaired (the next whole pass {next_whole_s} s away)")
    assert st.counters.get("reconcile_brought_forward", 0) >= 1, st.counters  # type: ignore[union-attr]
    assert "left the open list unheard" in procs.log(gw)
    client.close()


def test_a_whole_order_list_still_unread_two_minutes_after_the_start_reaches_a_person(
    tmp_path: Path, procs: Procs
) -> None:
    """KIS answers the unfilled list but every read of the day's whole list fails (HTTP 500 on
    CCLD_DVSN=00): orders flow on books that know only the open orders, and two minutes of market
    time after the start a person is told what that means; once KIS answers, the whole pass runs."""
    log = open(tmp_path / "twin.err", "wb")
    twin = subprocess.Popen(  # a replay clock at 300x: two market minutes pass in 0.4 s
        ktrader_cmd(*twin_args(5, "--tick-interval", "0", "--clock", "replay", "--speed", "300")),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        env=child_env(),
        start_new_session=True,
    )
    procs.procs.append(twin)
    info = json.loads(twin.stdout.readline())  # type: ignore[union-attr]
    admin = httpx.Client(base_url=info["admin_url"], timeout=10)
    fault = {"kind": "500", "count": 100_000, "path_contains": "CCLD_DVSN=00"}
    admin.post("/admin/faults/rest-error", json=fault).raise_for_status()
    run, gw = start_gateway_on_twin(procs, tmp_path, info)
    wait_for(lambda: fetch_status(run).synced, 30, what="the first (open orders) pass")
    client, n, day = _registered(
        run, AgentCard(id="early", name="early", strategy="x:Y", codes=["005930"], budget=10**7)
    )
    lower = admin.get("/admin/book/005930").json()["lower"]
    assert _order(client, "early", n, "005930", lower, day).accepted  # trading goes on meanwhile

    def alerted() -> StatusReply | None:
        st = fetch_status(run)
        return st if any("whole order list could not be read since the start" in a for a in st.alerts) else None

    st = wait_for(alerted, 30, what="the alert about the unread whole list")
    assert not st.reconciled_whole and "open orders only" in recon_line(st)  # type: ignore[union-attr,arg-type]
    assert st.counters["reconcile_errors"] >= 1  # type: ignore[union-attr]
    admin.post("/admin/faults/reset").raise_for_status()
    wait_for(lambda: fetch_status(run).reconciled_whole, 45, what="the whole list read once KIS answers")
    assert sum("could not be read since the start" in a for a in fetch_status(run).alerts) == 1  # told once
    client.close()
