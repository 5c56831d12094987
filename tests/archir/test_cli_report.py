"""``archir report`` and ``archir dashboard`` (archir/cli/report.py) on a small real run."""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from archir.cli.main import main
from archir.cli.report import make_dashboard
from search.experiment import ExperimentConfig, run_search
from search.store import Store

ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "sgdr"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-report") / "hc"
    run_search(ExperimentConfig(space="start", strategy="hillclimb", strategy_options={"moves": 1}, budget="2c",
                                round_size=1, train=dict(TRAIN)), out)
    return out


def _cmd() -> list[str]:
    exe = Path(sys.executable).with_name("archir")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "archir.cli.main"]


def _get(host: str, port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=b"x=1" if method in ("POST", "PUT") else None)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _snapshot(run: Path) -> dict[str, str]:
    """Every file of the run folder with its sha256 (SQLite's -wal/-shm side files aside)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_report_writes_one_self_contained_file(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "Plotly" in text and 'id="report-data"' in text
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "2 done" in said
    assert main(["report", str(run)]) == 0  # default: RUN/report.html
    assert (run / "report.html").is_file()
    (run / "report.html").unlink()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "no search store" in err and "how to fix" in err
    assert not (tmp_path / "r.html").exists()


def test_dashboard_serves_get_only_on_loopback(run):
    before = _snapshot(run)
    srv = make_dashboard(run, port=0)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    th.start()
    try:
        host, port = srv.server_address[:2]
        assert host == "127.0.0.1"
        code, head, body = _get(host, port, "/")
        assert code == 200 and head["Content-Type"].startswith("text/html")
        assert b'"live": true' in body and b'id="report-data"' in body
        code, _, body = _get(host, port, "/data.json")
        data = json.loads(body)
        with Store.open(run) as st:
            ids = [row[data["candidates"]["columns"].index("id")] for row in data["candidates"]["rows"]]
            assert ids == [c.id for c in st.candidates()]  # the page's form: candidates as columns (page_data)
        code, _, body = _get(host, port, "/stamp.json")
        assert code == 200 and json.loads(body)["stamp"] == data["stamp"]
        assert _get(host, port, "/", "HEAD")[0] == 200
        assert _get(host, port, "/nothing")[0] == 404
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            code, head, _ = _get(host, port, "/data.json", method)
            assert code == 405 and head["Allow"] == "GET, HEAD"
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(timeout=10)
    assert _snapshot(run) == before  # read-only: no request changed the run folder


def test_dashboard_command_prints_where_and_stops_on_ctrl_c(run):
    # 127.0.0.2 is loopback too, but not the default: the command warns that it is not serving 127.0.0.1 only
    p = subprocess.Popen([*_cmd(), "dashboard", str(run), "--port", "0", "--host", "127.0.0.2"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "archir dashboard: http://127.0.0.2:" in line and "read-only" in line
        port = int(line.split("http://127.0.0.2:", 1)[1].split("/", 1)[0])
        assert _get("127.0.0.2", port, "/stamp.json")[0] == 200
        assert _get("127.0.0.2", port, "/", "POST")[0] == 405
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
        err = p.stderr.read()
        assert "warning: serving on 127.0.0.2" in err and "stopped" in err and "Traceback" not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_dashboard_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    t0 = time.time()
    assert main(["dashboard", str(tmp_path), "--port", "0"]) == 2
    assert "no search store" in capsys.readouterr().err and time.time() - t0 < 30


def _bad_store(kind: str, run: Path, tmp_path: Path) -> Path:
    """A run folder made bad in one way: ``garbage`` (the sqlite file overwritten with bytes that are no
    database), ``damaged`` (a real store whose pages past the header are garbage) or ``newer`` (a store
    whose schema_version is above what this archir reads)."""
    bad = tmp_path / kind
    if kind == "garbage":
        bad.mkdir()
        (bad / "search.db").write_bytes(bytes(range(256)) * 64)
        return bad
    import shutil
    import sqlite3

    shutil.copytree(run, bad)
    db = bad / "search.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in search.db, none left in the WAL
        meta_pages = [r[0] for r in conn.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'meta'")]
        if kind == "newer":
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            conn.commit()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for side in ("search.db-wal", "search.db-shm"):
        (bad / side).unlink(missing_ok=True)
    if kind == "damaged":
        raw = bytearray(db.read_bytes())
        size = int.from_bytes(raw[16:18], "big") or 65536
        start = max(meta_pages) * size  # the schema and the meta table survive: the store opens, the candidates
        assert start < len(raw)         # (and everything after them) are garbage
        raw[start:] = b"\xa5" * (len(raw) - start)
        db.write_bytes(bytes(raw))
    return bad


@pytest.mark.parametrize("kind, what", [
    ("garbage", "not an archir search store (file is not a database)"),
    ("damaged", "the store is damaged (database disk image is malformed)"),
    ("newer", "written with store schema 99"),
])
def test_report_names_a_bad_store_and_what_to_do(run, tmp_path, capsys, kind, what):
    bad = _bad_store(kind, run, tmp_path)
    out = tmp_path / f"{kind}.html"
    assert main(["report", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert what in err and str(bad / "search.db") in err and "how to fix" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("archir: error")]) == 1
    assert not out.exists()


def test_report_bad_input_exits_cleanly_from_the_shell(run, tmp_path):
    """A damaged store (the case SQLite only notices while reading) through the installed command: exit 2, one
    error naming the file, no traceback (the other cases run in-process above: each second here is an import)."""
    bad = _bad_store("damaged", run, tmp_path)
    p = subprocess.run([*_cmd(), "report", str(bad), "-o", str(tmp_path / "r.html")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == "", p.stderr
    assert f"archir: error: {bad / 'search.db'}: the store is damaged" in p.stderr and "how to fix" in p.stderr
