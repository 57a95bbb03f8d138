"""Sweeps beyond one process: a Dask cluster on loopback (a scheduler and a worker process started
here) gives the same results as the in-process sweep; failing cells keep the rest; a rolling
walk-forward over a universe reports out-of-sample results and parameter stability."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tools.backtest.cli import main

ROOT = Path(__file__).resolve().parents[2]
CARD = ROOT / "cards" / "sma_cross_daily.toml"
pytest.importorskip("distributed")


@pytest.fixture
def dask_cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`dask scheduler` and one `dask worker` as real processes on 127.0.0.1; killed afterwards."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__WORKER__DAEMON="False")
    info = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "scheduler.log", "wb"),
            start_new_session=True,
        )
    ]
    try:
        wait_for(lambda: info.exists() and json.loads(info.read_text() or "{}").get("address"), 30, what="scheduler")
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dask",
                    "worker",
                    address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / "worker.log", "wb"),
                start_new_session=True,
            )
        )
        from distributed import Client

        with Client(address, timeout="20s") as c:
            wait_for(lambda: len(c.scheduler_info()["workers"]) >= 1, 40, what="a dask worker")
        yield address
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(5)


def test_dask_on_loopback_gives_the_in_process_results(shared_data: Path, tmp_path: Path, dask_cluster: str) -> None:
    args = [
        str(CARD),
        "--data",
        str(shared_data / "krx_daily_fdr_2020_2026"),
        "--from",
        "2020-01-02",
        "--to",
        "2026-05-29",
        "--sweep",
        "short=3,5,8",
        "--sweep",
        "long=20,40",
        "--no-plot",
    ]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    assert main(args + ["--out", str(tmp_path / "dask"), "--engine", "dask", "--address", dask_cluster]) == 0
    local = json.loads((tmp_path / "local" / "sweep.json").read_text())
    remote = json.loads((tmp_path / "dask" / "sweep.json").read_text())
    assert remote == local and len(local["rows"]) == 6 and not local["failed"]
    assert (tmp_path / "dask" / "sweep.csv").read_text() == (tmp_path / "local" / "sweep.csv").read_text()
    # a rolling walk-forward on the cluster too: the same windows, choices and out-of-sample figures
    roll = ["--rolling", "500,250", "--sweep", "short=3,5", "--sweep", "long=20,40"]
    base = args[:7] + ["--no-plot"]
    assert main(base + roll + ["--out", str(tmp_path / "rl")]) == 0
    assert main(base + roll + ["--out", str(tmp_path / "rd"), "--engine", "dask", "--address", dask_cluster]) == 0
    assert (tmp_path / "rl" / "sweep.json").read_text() == (tmp_path / "rd" / "sweep.json").read_text()


def test_failing_cells_keep_the_other_results(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # long=3 is invalid with short=5 (the strategy needs short < long): that cell fails, the rest run
    args = [
        str(CARD),
        "--data",
        str(shared_data / "krx_daily_fdr_2020_2026"),
        "--from",
        "2021-01-04",
        "--to",
        "2022-12-29",
        "--sweep",
        "short=5",
        "--sweep",
        "long=3,20,40",
        "--no-plot",
        "--out",
        str(tmp_path / "s"),
        "--workers",
        "2",
    ]
    assert main(args) == 0
    res = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [r.get("error") is not None for r in res["rows"]] == [True, False, False]
    assert "need 0 < short < long" in res["failed"][0]["error"] and res["best"] in (1, 2)
    err = capsys.readouterr().err
    assert "cell 0 {'short': 5, 'long': 3} failed" in err
    csv = (tmp_path / "s" / "sweep.csv").read_text().splitlines()
    assert len(csv) == 4 and "need 0 < short < long" in csv[1]


def test_rolling_walk_forward_over_a_universe(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "universe"
    folder.mkdir()
    for code in ("005930", "000660", "035420"):  # a small universe: three files of the FDR set
        (folder / f"{code}.csv").symlink_to(shared_data / "krx_daily_fdr_2020_2026" / f"{code}.csv")
    args = [
        str(CARD),
        "--data",
        str(folder),
        "--universe",
        "--from",
        "2020-01-02",
        "--to",
        "2026-05-29",
        "--sweep",
        "short=3,5",
        "--sweep",
        "long=20,40",
        "--rolling",
        "400,200",
        "--workers",
        "2",
        "--out",
        str(tmp_path / "wf"),
        "--no-plot",
    ]
    assert main(args) == 0
    res = json.loads((tmp_path / "wf" / "sweep.json").read_text())
    assert sorted(res["codes"]) == ["000660", "005930", "035420"]
    r = res["codes"]["005930"]
    assert r["oos_windows"] == len(r["windows"]) >= 5
    for w in r["windows"]:  # test windows follow their train windows and never overlap them
        assert w["train_range"][1] < w["test_range"][0] and 1 <= w["test_rank"] <= 4
    stab = r["stability"]
    assert set(stab) == {"short", "long"} and len(stab["short"]["chosen"]) == r["oos_windows"]
    assert 0 < stab["long"]["share"] <= 1 and stab["long"]["changes"] <= r["oos_windows"] - 1
    lines = (tmp_path / "wf" / "walk_forward.csv").read_text().splitlines()
    assert lines[0].startswith("code,window,train_from") and len(lines) == 1 + 3 * r["oos_windows"]
