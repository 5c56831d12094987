"""The report page in headless Chromium: open it, wait for its ready signal, time it, screenshot it.

One code path for the browser tests (``tests/search/test_report_browser.py``), the render-time
benchmark (``benchmarks/report_scale.py``) and the README's picture (``scripts/report_screenshot.sh``)::

    from search.report_browser import headless_chromium, load, screenshot
    with headless_chromium() as drv:
        ms = load(drv, Path("report.html").resolve().as_uri())  # ms from navigation start to ready
        drv.save_screenshot("report.png")

It drives the ``chromium`` and ``chromedriver`` found on PATH with Selenium (Debian: ``apt-get
install chromium chromium-driver``; ``pip install selenium``) and downloads nothing. The page's
ready signal is ``document.body.dataset.ready == "1"``, set once its scatter and progress plots
have drawn; ``document.body.dataset.readyMs`` is then ``performance.now()``: milliseconds since
navigation start.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Iterator

from search.report import ReportError

__all__ = ["chromium_paths", "headless_chromium", "load", "wait_for", "console_errors", "screenshot",
           "WINDOW"]

#: the window of the screenshots and tests (wide enough for the two columns, tall enough for the detail pane)
WINDOW = (1400, 2100)


def chromium_paths() -> tuple[str, str] | None:
    """``(browser, chromedriver)`` from PATH, or None when either is missing."""
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


@contextlib.contextmanager
def headless_chromium(window: tuple[int, int] = WINDOW, page_load_timeout: float = 120.0) -> Iterator:
    """A Selenium driver of headless Chromium (browser console logged), quit on exit.

    Raises:
        ReportError: no Chromium or chromedriver on PATH, or selenium is not installed.
    """
    paths = chromium_paths()
    if paths is None:
        raise ReportError("needs a headless Chromium and its driver on PATH; none found",
                          hint="Debian: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise ReportError("needs selenium to drive Chromium, which is not installed",
                          hint="pip install 'archir[dev]' (or pip install selenium)") from None
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={window[0]},{window[1]}", "--no-first-run", "--disable-extensions",
              "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=paths[1]), options=opts)  # no Selenium Manager lookup
    drv.set_page_load_timeout(page_load_timeout)
    try:
        yield drv
    finally:
        drv.quit()


def wait_for(drv, js: str, timeout: float = 30.0):
    """Poll the script ``js`` (a function body that returns) until it returns something truthy; that value.

    Raises:
        TimeoutError: it did not within ``timeout`` seconds.
    """
    t0 = time.time()
    while True:
        v = drv.execute_script(js)
        if v:
            return v
        if time.time() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for: {js}")
        time.sleep(0.05)


def load(drv, url: str, timeout: float = 60.0) -> float:
    """Open ``url`` and wait for the page's ready signal; milliseconds from navigation start to ready."""
    drv.get(url)
    return float(wait_for(drv, "return document.body && document.body.dataset.ready === '1' && "
                               "document.body.dataset.readyMs", timeout))


def console_errors(drv) -> list[dict]:
    """The browser console's SEVERE entries since the last call (errors, failed loads)."""
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(page: str | Path, png: str | Path, *, select: int | None = None,
               window: tuple[int, int] = WINDOW) -> Path:
    """Open the report file ``page`` in headless Chromium, select candidate ``select`` (if given) and save
    the viewport to ``png``.

    Raises:
        ReportError: no browser (see :func:`headless_chromium`), or the page logged console errors.
    """
    png = Path(png)
    with headless_chromium(window) as drv:
        load(drv, Path(page).resolve().as_uri())
        if select is not None:
            drv.execute_script(f"window.archirSelect({int(select)}); window.scrollTo(0, 0);")
            time.sleep(0.5)  # the detail pane's curve draws on the next tick
        errs = console_errors(drv)
        if errs:
            raise ReportError(f"the page logged {len(errs)} console error(s): {errs[0].get('message')}",
                              file=page, hint="this is an archir bug: report it with the page")
        png.parent.mkdir(parents=True, exist_ok=True)
        if not drv.save_screenshot(str(png)):
            raise ReportError("Chromium could not save the screenshot", file=png, hint="check the folder is writable")
    return png
