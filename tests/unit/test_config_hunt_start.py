"""Gateway starts that went wrong quietly or as an 'unexpected' error (the `config` hunt): a tcp port above 65535
that libzmq wrapped, ... Each now stops at once with a plain line and the documented exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


# a paper account's credentials as the environment gives them (never sent: each test stops before KIS is called)
KIS_ENV = {
    "KTRADER_KIS_APP_KEY": "PS" + "k" * 34,
    "KTRADER_KIS_APP_SECRET": "s" * 180,
    "KTRADER_KIS_ACCOUNT": "50123456-01",
    "KTRADER_KIS_HTS_ID": "someone",
}


def ktrader(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    drop: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`ktrader ARGS` in a process of its own; `drop`: the variables (or prefixes) of this one's it does not get."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return subprocess.run(
        [sys.executable, "-m", "tools", *args],
        cwd=cwd,
        env={**kept, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def plain(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stderr and "unexpected" not in p.stderr, p.stderr
    return p.stderr


def test_a_tcp_port_outside_1_65535_is_refused(tmp_path: Path) -> None:
    """libzmq takes a port modulo 65536: 99999 listened on 34463, and gateway.json said so to no one."""
    run = str(tmp_path / "run")
    p = ktrader("gateway", "--run-dir", run, "--router", "tcp://127.0.0.1:99999")
    assert p.returncode == 2 and "--router tcp://127.0.0.1:99999: the port 99999 is not one of 1..65535" in plain(p)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'run_dir = "{run}"\npub_endpoint = "tcp://127.0.0.1:70000"\n')
    p = ktrader("gateway", "--config", str(cfg))
    assert p.returncode == 2 and "`pub_endpoint`: tcp://127.0.0.1:70000: the port 70000 is not one of" in plain(p)
    from common.config import endpoint_problem

    assert endpoint_problem("tcp://127.0.0.1:0") == ""  # (a review) any free port, as `*`: it worked before


def test_the_embedded_twin_with_a_bad_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    """Its adapter takes ca_bundle as paper/real's does: it said 'unexpected TlsConfigError', exit 1."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n[broker]\nca_bundle = "{tmp_path / "none.pem"}"\n')
    p = ktrader("gateway", "--config", str(cfg))
    err = plain(p)
    assert p.returncode == 2 and f"configuration: broker.ca_bundle {tmp_path / 'none.pem'}: no such file" in err, err
    assert "fix or remove broker.ca_bundle" in err


def test_an_unwritable_home_is_a_plain_start_up_failure(tmp_path: Path) -> None:
    """A paper/real gateway locks its app key under ~/.ktrader/keys: a read-only HOME (systemd ProtectHome, a
    container) said 'unexpected OSError', exit 1, with no hint (here HOME is a file: the same mkdir fails)."""
    home = tmp_path / "home"
    home.write_text("")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n[broker]\nenv = "paper"\nstart_retries = 0\n')
    p = ktrader("gateway", "--config", str(cfg), env={**KIS_ENV, "HOME": str(home)}, drop=("KTRADER_KEY_LOCKS",))
    err = plain(p)
    assert p.returncode == 2 and f"error: app key lock: cannot create {home}/.ktrader/keys/" in err, err
    assert "check: set KTRADER_KEY_LOCKS to a writable folder" in err


def test_a_twin_folder_of_another_sim_seed_says_so(tmp_path: Path) -> None:
    """The twin restores its saved accounts (the old seed's) while the new seed makes other demo credentials: it
    failed with exit 6, 'KIS refused: OPSQ2000 ... check KTRADER_KIS_ACCOUNT', a variable nobody had set."""
    import json

    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    state = tmp_path / "run" / "db" / "twin-state.json"
    state.parent.mkdir(parents=True)
    save(Twin(TwinConfig(seed=7)), state)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n[broker]\nsim_seed = 8\n')
    p = ktrader("gateway", "--config", str(cfg))
    err = plain(p)
    assert p.returncode == 2 and f"{state}: this run folder's twin was made with [broker] sim_seed = 7" in err, err
    assert "use sim_seed = 7, or `ktrader reset --run-dir" in err
    p = ktrader("sim", "--seed", "8", "--state-file", str(state))  # the standalone twin: the same
    assert p.returncode == 2 and "start it with --seed 7" in plain(p)
    doc = json.loads(state.read_text())
    del doc["seed"]  # a folder saved before the seed was kept: used as before
    state.write_text(json.dumps(doc))
    assert Twin(TwinConfig(seed=8, state_file=state)).config.seed == 8


def test_an_empty_run_dir_is_refused(tmp_path: Path) -> None:
    """`--run-dir "$RUN_DIR"` with the variable unset, or run_dir = "": the working directory became the run folder
    (everything in it chmodded 0700/0600), and `ktrader reset` moved the user's files into an archive."""
    scratch = tmp_path / "cwd"  # (the working directory such a command takes over: never the repo's)
    scratch.mkdir()
    for args in (("gateway", "--run-dir", ""), ("reset", "--run-dir=", "-y"), ("status", "--run-dir", " ")):
        p = ktrader(*args, cwd=scratch)
        assert p.returncode == 2 and "error: --run-dir is empty" in plain(p), (args, p.stderr)
    cfg = tmp_path / "gw.toml"
    cfg.write_text('run_dir = ""\n')
    p = ktrader("gateway", "--config", str(cfg), cwd=scratch)
    assert p.returncode == 2 and "`run_dir`: is empty: give the run folder" in plain(p)


def test_a_folder_of_the_users_own_files_is_not_taken_over(tmp_path: Path) -> None:
    """`--run-dir .` in a project folder (or HOME): refused before anything there is chmodded or moved."""
    own = tmp_path / "project"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    script = own / "deploy.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    p = ktrader("gateway", "--run-dir", ".", cwd=own)
    assert p.returncode == 2, p.stderr
    assert "error: run_dir . holds files that are not ktrader's (deploy.sh) and none that are" in plain(p)
    p = ktrader("reset", "--run-dir", str(own), "-y")
    assert p.returncode == 1 and "not a run folder: nothing there is reset" in plain(p)
    assert sorted(x.name for x in own.iterdir()) == ["deploy.sh"] and not (tmp_path / "project.archive").exists()
    assert (own.stat().st_mode & 0o777, script.stat().st_mode & 0o777) == (0o755, 0o755)


def test_run_folders_stay_usable(tmp_path: Path) -> None:
    from server.app import run_dir_problem
    from server.run_folder import foreign_folder

    assert foreign_folder(ROOT / "run") == ""  # the repo's: its README.md (and run/demo once the demo ran)
    readme_only = tmp_path / "fresh"
    readme_only.mkdir()
    (readme_only / "README.md").write_text("# run/\n")
    assert run_dir_problem(readme_only) == ""
    used = tmp_path / "used"
    (used / "db").mkdir(parents=True)
    (used / "db" / "gateway.sqlite").write_bytes(b"")
    (used / "notes.txt").write_text("mine")  # a run folder with a file of the user's: still a run folder
    assert run_dir_problem(used) == "" and run_dir_problem(tmp_path / "new") == ""
    # (a review) a new volume's lost+found, hidden files: a new folder; the run/ of a demo that ran: a run folder
    mount = tmp_path / "mnt"
    (mount / "lost+found").mkdir(parents=True)
    (mount / ".gitkeep").write_text("")
    assert foreign_folder(mount) == ""
    repo_run = tmp_path / "run"
    (repo_run / "demo" / "keys").mkdir(parents=True)
    (repo_run / "demo" / "gateway.lock").write_text("")
    (repo_run / "README.md").write_text("# run/\n")
    assert foreign_folder(repo_run) == ""
    # (a review) a folder named like ktrader's own is no mark: a checkout (kis/), a HOME with data/
    checkout = tmp_path / "checkout"
    for name in ("kis", "data", "logs", "agent"):
        (checkout / name).mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    assert "not a run folder" in foreign_folder(checkout)
    assert "not a run folder" in foreign_folder(ROOT)  # the checkout itself


def test_the_tools_that_make_a_run_folders_keys_refuse_a_folder_of_the_users_own(tmp_path: Path) -> None:
    """(a review) `ktrader keys init`, `cards approve --fresh` and the demo made keys/ in any folder, which then
    passed for a run folder: the gateway took it over, and `reset` moved everything there (.git, .venv) away."""
    own = tmp_path / "project"
    own.mkdir()
    (own / "deploy.sh").write_text("#!/bin/sh\n")
    for args in (
        ("keys", "init", "--run-dir", str(own)),
        ("cards", "approve", str(ROOT / "cards" / "ma_cross.toml"), "--run-dir", str(own), "--fresh"),
        ("demo", "--headless", "--run-dir", str(own)),
    ):
        p = ktrader(*args)
        assert p.returncode == 2 and "not a run folder" in plain(p), (args, p.stderr)
    assert sorted(x.name for x in own.iterdir()) == ["deploy.sh"]


def test_a_standby_that_could_never_take_over_says_so_at_once(tmp_path: Path) -> None:
    """It waited quietly, 'healthy', and failed (exit 4, or 2) only when the gateway it was to replace died, leaving
    none. Its credentials and the folder's owner are checked before it waits; the running gateway is untouched."""
    from server.run_folder import lock_run_dir
    from server.store import Store

    run = tmp_path / "run"
    store = Store(run / "db" / "gateway.sqlite")
    store.claim_owner({"env": "sim"}, run)  # the books of the twin
    store.close()
    primary = lock_run_dir(run, standby=False)  # this process plays the running gateway
    try:
        cfg = tmp_path / "paper.toml"
        cfg.write_text(f'run_dir = "{run}"\n[broker]\nenv = "paper"\n')
        standby = ("gateway", "--standby", "--config", str(cfg))
        p = ktrader(*standby, drop=("KTRADER_KIS_",), timeout=30)
        assert p.returncode == 4 and "error: KIS credentials (paper): missing app_key" in plain(p), p.stderr
        p = ktrader(*standby, env=KIS_ENV, drop=("KTRADER_KIS_",), timeout=30)
        err = plain(p)
        assert p.returncode == 2, err
        assert f"error: {run} holds the books of the KIS twin (env sim), and this start is for the paper account" in err
        assert primary.is_locked and (run / "gateway.pid").read_text().strip() == str(os.getpid())
    finally:
        primary.release()


def test_a_run_folder_an_agent_the_console_or_a_chaos_run_used_first_is_still_one(tmp_path: Path) -> None:
    """(a review) ktrader's own entries made before any gateway started -- an agent's locks/, the console's logs/,
    the token cache chaos makes under kis/ -- made the folder 'not a run folder': the gateway and reset refused it."""
    from server.app import run_dir_problem

    for entries in (["locks"], ["logs"], ["kis"], ["locks", "logs", "kis"]):
        run = tmp_path / "-".join(entries) / "run"
        run.mkdir(parents=True)
        (run / "README.md").write_text("the repo's run folder")
        for name in entries:
            (run / name).mkdir()
        assert run_dir_problem(run) == "", entries


def test_keys_agent_and_export_refuse_a_folder_of_the_users_own(tmp_path: Path) -> None:
    """(a review) `ktrader keys agent` wrote keys/credentials/ into a project folder, which then passed for a run
    folder (`reset` moved the user's notes into an archive); `keys export --to` wrote its gateway.json there."""
    own = tmp_path / "proj"
    (own / "src").mkdir(parents=True)
    (own / "notes.txt").write_text("mine")
    p = ktrader("keys", "agent", "bot", "--run-dir", str(own))
    assert p.returncode == 2 and "not a run folder" in plain(p), p.stderr
    p = ktrader("keys", "export", "bot", "--to", str(own), "--run-dir", str(tmp_path / "run"))
    assert p.returncode == 2 and "not a run folder" in plain(p), p.stderr
    assert sorted(x.name for x in own.iterdir()) == ["notes.txt", "src"]
