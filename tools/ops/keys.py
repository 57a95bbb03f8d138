"""`ktrader keys`: CURVE keys for agents and tools on other hosts (files: common/curve.py).

ktrader keys init                      the gateway's pair, the signing key, the tools' pair
ktrader keys agent ID                  a pair for agent ID (and its signing credential); the gateway accepts it
ktrader keys export ID --to DIR        DIR becomes the agent host's run folder (gateway.json, its key, its credential)
ktrader keys revoke ID                 the gateway refuses ID's key and credential, and its card is no longer approved
ktrader keys list                      what is there
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import NoReturn, Optional

import typer

from common import approvals, credentials, curve
from common.config import ConfigError
from common.connection import ConnectionFileError, GatewayInfo, read_info, write_info

keys_app = typer.Typer(no_args_is_help=True, help="CURVE keys for agents and tools on other hosts (tcp endpoints).")

_RUN = typer.Option(Path("run"), "--run-dir", help="the gateway's run folder")
_TCP = re.compile(r"^(tcp://)(.+):(\d+)$")
_WILDCARD = {"*", "0.0.0.0", "[::]", "::"}


def _fail(e: Exception) -> NoReturn:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _refuse_foreign(folder: Path) -> None:
    """A folder of the user's own files is no run folder to write keys into: they would make it pass for one (the
    gateway then took it over, and `ktrader reset` moved the user's files into an archive: a review)."""
    from server.run_folder import foreign_folder

    if foreign := foreign_folder(folder):
        _fail(ValueError(f"{foreign}: give a new or empty folder, or a run folder (--run-dir / --to)"))


@keys_app.command("init")
def init(
    run_dir: Path = _RUN,
    force: bool = typer.Option(
        False, "--force", help="replace existing keys (every client then needs a new gateway.json)"
    ),
) -> None:
    """Make the gateway's key pair, the frame-signing key and the operator tools' pair."""
    _refuse_foreign(run_dir)
    try:
        made = curve.init_gateway(run_dir, force=force)
    except (curve.CurveError, OSError) as e:
        _fail(e)
    for path in made:
        typer.echo(f"wrote {path}")
    if not made:
        typer.echo(f"keys already in {curve.keys_dir(run_dir)} (--force replaces them)")
    try:
        typer.echo(f"gateway public key {curve.gateway_pair(run_dir).public.decode()}")
    except curve.CurveError as e:
        _fail(e)


@keys_app.command("agent")
def agent(
    agent_id: str = typer.Argument(..., help="the agent's id (its card's id)"),
    run_dir: Path = _RUN,
    force: bool = typer.Option(False, "--force", help="replace an existing pair"),
) -> None:
    """Make a key pair for one agent; the gateway accepts its public key from now on."""
    _refuse_foreign(run_dir)
    try:
        curve.check_agent_name(agent_id)
        secret = curve.make_client(run_dir, agent_id, force=force)
        cred, made = credentials.issue(run_dir, agent_id)
    except (curve.CurveError, OSError) as e:
        _fail(e)
    typer.echo(f"wrote {curve.client_public_path(run_dir, agent_id)} (the gateway accepts it)")
    typer.echo(
        f"{'wrote' if made else 'kept'} {cred} (the agent's signing credential; its card must be approved: "
        "ktrader cards approve CARD)"
    )
    typer.echo(f"wrote {secret} (the agent's secret: `ktrader keys export {agent_id} --to DIR` for another host)")


@keys_app.command("revoke")
def revoke(agent_id: str = typer.Argument(...), run_dir: Path = _RUN) -> None:
    """Forget an agent's key and credential and withdraw its card's approval: its connections and registrations
    are refused, a running agent's heartbeats too (it exits within seconds, code 2: a supervisor does not restart
    it; its open orders keep working). The approval goes too, or the gateway's next start would issue the agent a
    fresh credential (it issues one to every approved agent)."""
    withdraw_failed: Exception | None = None
    try:
        curve.check_agent_name(agent_id)
        # the approval first: it is what a gateway's start issues a credential from (withdrawn last, a revoke cut
        # short after the files went was undone by the next start: a hunt)
        try:
            withdrawn = approvals.exists(run_dir) and approvals.withdraw(run_dir, agent_id)
        except (ConfigError, OSError) as e:  # the key and credential go all the same: the connections stop now
            withdrawn, withdraw_failed = False, e
        gone = curve.revoke_client(run_dir, agent_id)
        if credentials.revoke(run_dir, agent_id):
            gone.append(credentials.credential_path(run_dir, agent_id))
    except (curve.CurveError, ConfigError, OSError) as e:
        _fail(e)
    for path in gone:
        typer.echo(f"removed {path}")
    if withdraw_failed is not None:
        _fail(
            ConfigError(
                f"{withdraw_failed}; the approval of {agent_id} is NOT withdrawn: the gateway's next start would issue "
                f"it a fresh credential: mend the approvals file and run the revoke again"
            )
        )
    if withdrawn:
        typer.echo(
            f"withdrew the approval of {agent_id} ({approvals.registry_path(run_dir)}): its card must be approved "
            f"again before it may trade: ktrader cards approve --run-dir {run_dir} CARD"
        )
        # (its orders are the gateway's to end, not this file operation's: they keep working at KIS, and its orders
        # held for the next session go out at the open: a hunt)
        typer.echo(
            f"its open orders keep working (those held for the next session go at its open): "
            f"ktrader control cancel_all --agent {agent_id} --run-dir {run_dir} ends them; its positions stay"
        )
    if not gone and not withdrawn:
        typer.echo(f"no key, credential or approval for {agent_id} in {curve.keys_dir(run_dir)}")


@keys_app.command("list")
def list_keys(run_dir: Path = _RUN) -> None:
    """The gateway's key and the clients it accepts."""
    try:
        pair = curve.gateway_pair(run_dir)
        typer.echo(f"gateway {pair.public.decode()}  ({curve.gateway_secret_path(run_dir)})")
    except curve.CurveError as e:
        typer.echo(f"gateway: {e}")
    clients = curve.authorised_clients(run_dir)
    for public, name in sorted(clients.items(), key=lambda kv: kv[1]):
        here = "secret here" if curve.client_secret_path(run_dir, name).exists() else "secret elsewhere"
        typer.echo(f"client {name:<24} {public.decode()}  ({here})")
    if not clients:
        typer.echo("no client keys: ktrader keys agent ID")


def export_bundle(run_dir: Path, agent_id: str, to: Path, router: str, pub: str) -> list[Path]:
    """`to` as an agent host's run folder: gateway.json (the given endpoints, the stable signing key,
    the gateway's public key) and keys/clients/<id>.key_secret."""
    curve.check_agent_name(agent_id)
    for ep in (router, pub):
        if not curve.network(ep):
            raise curve.CurveError(f"{ep} is not a network endpoint: a remote agent dials tcp://HOST:PORT")
    pair = curve.client_pair(run_dir, agent_id)
    cred = credentials.load(run_dir, agent_id)  # its card approved on this host (ktrader cards approve)
    info = GatewayInfo(
        router=router,
        pub=pub,
        key=curve.signing_key(run_dir).hex(),
        pid=0,
        session="exported",
        started_ns=0,
        curve_key=curve.gateway_pair(run_dir).public.decode("ascii"),
    )
    curve.write_secret(curve.client_secret_path(to, agent_id), pair)  # the agent's host needs only this half
    return [write_info(to, info), curve.client_secret_path(to, agent_id), credentials.write(to, cred)]


def _endpoints(run_dir: Path, host: str | None) -> tuple[str, str]:
    try:
        info = read_info(run_dir)
    except ConnectionFileError as e:
        raise curve.CurveError(f"{e}; or give --router and --pub as the agent's host will dial them") from None
    out = []
    for ep in (info.router, info.pub):
        m = _TCP.match(ep)
        if m is None:
            raise curve.CurveError(
                f"the running gateway serves {ep}: start it with --router tcp://HOST:PORT "
                "--pub tcp://HOST:PORT for remote agents"
            )
        if host:
            ep = f"{m.group(1)}{host}:{m.group(3)}"
        elif m.group(2) in _WILDCARD:
            raise curve.CurveError(f"the gateway listens on {ep}: say which address the agent dials with --host")
        out.append(ep)
    return out[0], out[1]


@keys_app.command("export")
def export(
    agent_id: str = typer.Argument(...),
    to: Path = typer.Option(..., "--to", help="folder to write (becomes the agent host's run/)"),
    run_dir: Path = _RUN,
    host: Optional[str] = typer.Option(None, help="the gateway's address as the agent's host sees it"),
    router: str = typer.Option("", help="ROUTER endpoint the agent dials (default: the running gateway's)"),
    pub: str = typer.Option("", help="PUB endpoint the agent dials"),
) -> None:
    """Write what an agent on another host needs: copy the folder there as its run/ (scp -r), then
    run `ktrader agent run CARD --run-dir run` on that host."""
    _refuse_foreign(to)
    try:
        if not router or not pub:
            router, pub = _endpoints(run_dir, host)
        written = export_bundle(run_dir, agent_id, to, router, pub)
    except (curve.CurveError, credentials.CredentialError, OSError) as e:
        if to.exists() and not any(to.iterdir()):
            shutil.rmtree(to, ignore_errors=True)
        _fail(e)
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(
        f"agent {agent_id} dials {router} and {pub}; copy {to} to its host as run/ (keep it private: it holds "
        "the agent's secret key and the signing key)"
    )
