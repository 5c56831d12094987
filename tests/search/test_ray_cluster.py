"""A real Ray cluster on this machine: a head and a second node started with ``ray start``, loopback only.

``archir search --executor ray --address 127.0.0.1:PORT`` runs against it while one Ray worker process
is killed with SIGKILL in the middle of a candidate: the candidate is retried (``max_retries``),
nothing is lost or trained twice in the store, and the results equal the serial run's for the seed.
The cluster is started with ``ray start --block`` in its own process group and stopped by signalling
those two processes only (``ray stop`` would stop every Ray on the machine, other tests' included).
Skips cleanly without Ray.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.executors import ExecutorError, RayExecutor
from search.experiment import ExperimentConfig, run_search
from tests.search.test_executors import CONFIG, _snapshot

pytestmark = pytest.mark.slow

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # Ray >= 2.5x turns token authentication on for clusters started with ``ray start``; every
    # process that joins must then run in token mode too (the token is in ~/.ray/auth_token)
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _nodes_alive(address: str) -> int:
    out = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=_env(),
                         timeout=60).stdout
    active = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
    return sum(line.strip().startswith("1 node_") for line in active.splitlines())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'archir[ray]')")
    if RAY is None:
        pytest.skip("the ray command line is not on PATH")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    tmp = tmp_path_factory.mktemp("ray")
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1"]
    log = open(tmp / "ray.log", "wb")
    procs = [subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                               "--disable-usage-stats", *common], stdout=log, stderr=log, env=_env(),
                              start_new_session=True)]
    try:
        deadline = time.monotonic() + 120
        while _nodes_alive(address) < 1:
            assert procs[0].poll() is None and time.monotonic() < deadline, (tmp / "ray.log").read_text()
            time.sleep(1)
        procs.append(subprocess.Popen([RAY, "start", f"--address={address}", *common], stdout=log, stderr=log,
                                      env=_env(), start_new_session=True))
        while _nodes_alive(address) < 2:
            assert procs[1].poll() is None and time.monotonic() < deadline, (tmp / "ray.log").read_text()
            time.sleep(1)
        yield address
    finally:
        _stop(procs)
        log.close()


def _ray_workers_running_a_candidate() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_ray_entry" in line]


def _cli_args(out: Path) -> list[str]:
    c = CONFIG
    return ["search", "--space", c["space"], "--space-opt", "layers=2", "--strategy", c["strategy"],
            "--population", "2", "--sample", "2", "--budget", c["budget"], "--round-size", str(c["round_size"]),
            "--seed", str(c["seed"]), "--objective", c["objective"], "--epochs", "1", "--batch-size", "128",
            "--lr", "0.05", "--no-export", "--quiet", "--out", str(out), "--sync"]  # CONFIG's rounds


def test_search_on_a_cluster_survives_a_killed_worker_and_equals_serial(cluster, tmp_path):
    serial = tmp_path / "serial"
    run_search(ExperimentConfig(**CONFIG), serial, executor="serial")
    before = set(_ray_workers_running_a_candidate())  # another test's local Ray, if any: not ours to kill
    out = tmp_path / "cluster"
    proc = subprocess.Popen([sys.executable, "-m", "archir.cli.main", *_cli_args(out), "--executor", "ray",
                             "--address", cluster], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=tmp_path)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        running = [p for p in _ray_workers_running_a_candidate() if p not in before]
        if running:
            time.sleep(0.5)  # into the candidate's training
            try:
                os.kill(running[0], signal.SIGKILL)
                killed = running[0]
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    text = proc.communicate(timeout=600)[0].decode(errors="replace")
    assert proc.returncode == 0, text
    assert killed is not None, "no Ray worker was seen running a candidate"
    snap = _snapshot(out)
    assert [s[0] for s in snap] == [0, 1, 2, 3] and [s[5] for s in snap] == ["done"] * 4  # none lost, none twice
    assert snap == _snapshot(serial)  # the retried candidate trained to the result its first try would have


def test_max_retries_must_be_a_non_negative_int():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'archir[ray]')")
    for bad in (-1, 1.5, True):  # refused before Ray is started or joined
        with pytest.raises(ExecutorError, match="max_retries must be an int >= 0"):
            RayExecutor(max_retries=bad)
