"""The report page in a real browser: headless Chromium (Debian's chromium + chromium-driver) with Selenium.

Nothing is downloaded at run time: the tests use the ``chromium`` and ``chromedriver`` on PATH and
skip, with the reason, when either is missing (``scripts/test.sh`` installs them with apt when it
runs as root, so CI runs these). The page is the report of a small real morphism search (with a
failed candidate added through the store's API) opened from a ``file://`` URL, then the live
dashboard's page served on 127.0.0.1.

The browser is driven through ``search.report_browser`` (the code path of ``scripts/report_screenshot.sh``,
which writes the README's picture, and of ``benchmarks/report_scale.py``).
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from search.experiment import ExperimentConfig, run_search
from search.report import PAGE_DIGITS, write_report
from search.report_browser import chromium_paths, console_errors, headless_chromium, load, wait_for
from search.store import Candidate, Store

pytestmark = pytest.mark.browser

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "sgdr"}
REASON = "train: ValueError: <b>bold</b> & </td> not a tag"


@pytest.fixture(scope="module")
def browser():
    if chromium_paths() is None:
        pytest.skip("needs a headless Chromium and its driver on PATH (Debian: apt-get install chromium "
                    "chromium-driver; scripts/test.sh installs them when run as root); none found")
    pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install 'archir[dev]')")
    with headless_chromium() as drv:  # the same code path as scripts/report_screenshot.sh and the benchmark
        drv.set_page_load_timeout(60)
        yield drv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser-run") / "hc"
    run_search(ExperimentConfig(space="start", strategy="hillclimb", strategy_options={"moves": 2}, budget="4c",
                                round_size=1, train=dict(TRAIN)), out)
    with Store.open(out, lock=True) as st:
        nid = st.next_id()
        st.add(Candidate(id=nid, round=90, op="morph:2", decisions={}, seed=1, parents=[0]))
        st.finish(Candidate(id=nid, round=90, op="morph:2", decisions={}, seed=1, parents=[0], status="failed",
                            error=REASON))
    return out


def _wait(drv, js: str, timeout: float = 30.0):
    return wait_for(drv, js, timeout)


def _errors(drv) -> list[dict]:
    return console_errors(drv)


def _col(drv, key: str) -> list[str]:
    return drv.execute_script(
        "const ths = [...document.querySelectorAll('#cands thead th')];"
        "const i = ths.findIndex((t) => t.dataset.key === arguments[0]);"
        "return [...document.querySelectorAll('#cands tbody tr')].map((r) => r.cells[i].textContent);", key)


def test_the_report_page_in_chromium(browser, run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    with Store.open(run) as st:
        cands = st.candidates()
    done = [c for c in cands if c.status == "done"]
    page, _ = write_report(run, tmp_path / "report.html")
    load(browser, page.resolve().as_uri())
    assert browser.execute_script("return window.archirReady") is True
    assert _errors(browser) == []

    # the scatter has one point per done candidate
    n = browser.execute_script("return document.getElementById('scatter').data.filter((t) => t.meta === 'points')"
                               ".reduce((s, t) => s + t.x.length, 0)")
    assert n == len(done)

    # click a frontier point that has a parent: the detail pane shows it, its drawing and its lineage
    target = browser.execute_script("""
        const gd = document.getElementById('scatter');
        const ti = gd.data.findIndex((t) => t.meta === 'points' && t.name.startsWith('Pareto'));
        const pts = [...gd.querySelectorAll('.scatterlayer .trace')][ti].querySelectorAll('path.point');
        const k = pts.length - 1;
        return [ti, k, gd.data[ti].customdata[k]];""")
    ti, k, cid = target
    assert cid != 0  # the frontier's lowest error is a grown candidate
    pt = browser.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")[ti].find_elements(By.CSS_SELECTOR,
                                                                                          "path.point")[k]
    ActionChains(browser).move_to_element(pt).pause(0.3).click().perform()
    shown = _wait(browser, "const e = document.getElementById('detail-id'); return e && e.dataset.id")
    assert int(shown) == cid
    c = next(x for x in cands if x.id == cid)
    assert browser.execute_script("return document.querySelectorAll('#drawing svg').length") == 1
    assert browser.execute_script("return document.querySelectorAll('#drawing svg g.node').length") > 3
    lineage = browser.find_element(By.ID, "lineage").text
    assert f"#{c.parents[0]}" in lineage and "morphism" in lineage
    assert "passed" in browser.find_element(By.ID, "preservation").text
    assert f"--id {cid} --onnx" in browser.find_element(By.ID, "export-cmd").text
    # its training curve: train loss and val error per epoch, as the store recorded them
    with Store.open(run) as st:
        history = st.curves()[cid]
    _wait(browser, "const g = document.getElementById('curve'); return g && g.data && g.data.length >= 2")
    drawn = browser.execute_script("return Object.fromEntries(document.getElementById('curve').data"
                                   ".map((t) => [t.meta, [t.x, t.y]]))")
    def shown(key):  # the page's numbers: PAGE_DIGITS significant digits (search.report.page_data)
        return [[h["epoch"] for h in history], [float(f"{h[key]:.{PAGE_DIGITS}g}") for h in history]]

    assert drawn["train_loss"] == shown("train_loss") and drawn["val_error"] == shown("val_error")
    assert browser.find_elements(By.ID, "no-curve") == []

    # the table sorts on a header click (ascending, then descending)
    def errs():
        return [float(v) for v in _col(browser, "val_error") if v]

    browser.find_element(By.CSS_SELECTOR, "#cands th[data-key='val_error']").click()
    asc = errs()
    assert asc == sorted(asc) and len(asc) == len(done)
    browser.find_element(By.CSS_SELECTOR, "#cands th[data-key='val_error']").click()
    assert errs() == sorted(asc, reverse=True)

    # the failed candidate is listed with its reason, as text (never as markup)
    browser.execute_script("const s = document.getElementById('f-status'); s.value = 'failed';"
                           "s.dispatchEvent(new Event('input'));")
    assert _col(browser, "error") == [REASON]
    assert browser.execute_script("return document.querySelectorAll('#cands tbody b').length") == 0
    browser.execute_script("const s = document.getElementById('f-status'); s.value = '';"
                           "s.dispatchEvent(new Event('input'));")
    browser.execute_script(f"window.archirSelect({cid}); window.scrollTo(0, 0);")
    time.sleep(0.3)
    assert _errors(browser) == []
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_dashboard_refreshes_as_the_store_grows(browser, run, tmp_path):
    from archir.cli.report import make_dashboard

    live = tmp_path / "live"
    shutil.copytree(run, live)
    srv = make_dashboard(live, port=0, poll_s=0.5)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    th.start()
    try:
        host, port = srv.server_address[:2]
        assert host == "127.0.0.1"
        load(browser, f"http://{host}:{port}/")
        before = browser.execute_script("return document.querySelectorAll('#cands tbody tr').length")
        with Store.open(live, lock=True) as st:  # the search writes a new candidate while the page is open
            nid = st.next_id()
            st.add(Candidate(id=nid, round=91, op="sample", decisions={}, seed=5))
            st.mark_running([nid])
        _wait(browser, f"return document.querySelectorAll('#cands tbody tr').length === {before + 1}", timeout=20)
        assert "1 running" in browser.find_element("id", "subtitle").text
        assert _errors(browser) == []
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(timeout=10)


def test_a_table_evaluator_run_in_chromium(browser, tmp_path):
    """No graphs, no costs, no curves: the page still draws every point (error against candidate id) and says why."""
    from selenium.webdriver.common.by import By

    from tests.search.test_report import table_run

    run = table_run(tmp_path / "t")
    page, data = write_report(run, tmp_path / "table.html")
    browser.get("about:blank")
    _errors(browser)  # drop what an earlier page (a stopped dashboard's polling) logged
    load(browser, page.resolve().as_uri())
    assert _errors(browser) == []
    n = browser.execute_script("return document.getElementById('scatter').data.filter((t) => t.meta === 'points')"
                               ".reduce((s, t) => s + t.x.length, 0)")
    assert n == data["run"]["counts"]["done"] == 4
    assert "no cost was recorded" in browser.find_element(By.ID, "scatter-note").text
    browser.find_element(By.CSS_SELECTOR, "#cands tbody tr[data-id='2']").click()
    assert _wait(browser, "const e = document.getElementById('detail-id'); return e && e.dataset.id") == "2"
    assert browser.find_element(By.ID, "no-curve").text.startswith("no curve recorded")
    assert "no graph recorded" in browser.find_element(By.ID, "no-graph").text
    assert browser.find_elements(By.ID, "curve") == [] and browser.find_elements(By.ID, "export-cmd") == []
    assert _errors(browser) == []
