"""Shared test configuration: hypothesis profiles, the GPU and browser markers, one torch thread, verification on.

Every pass of the suite runs with ``ARCHIR_VERIFY=1``: the ``Verify`` and ``CheckPreserved``
instruments check each outermost pass call (``passes.infra``), whoever makes it, in the test
process and in the processes it starts (they inherit the environment). A test that
deliberately builds a graph a verifying run would refuse (a pass declared
``preserves="function"`` that does not preserve, an injected bug) opts out with
``@pytest.mark.no_verify(reason=...)``. ``ARCHIR_VERIFY=0 scripts/test.sh`` runs the suite without.

torch runs the suite's small graphs faster on one thread, and much faster on a loaded machine
(OpenMP threads spin against other processes, e.g. the other pytest-xdist worker); each test
module runs with one intra-op thread and the previous setting is restored afterwards.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("ARCHIR_VERIFY", "1")

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def pytest_configure(config):
    # tests that drive headless Chromium (tests/search/test_report_browser.py); they skip with the reason when
    # Debian's chromium + chromium-driver are missing (scripts/test.sh installs them via apt when run as root)
    config.addinivalue_line("markers", "browser: drives a headless Chromium with Selenium (skipped without one)")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA install means: no GPU here
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        m = item.get_closest_marker("no_verify")
        if m is not None and not (m.args or m.kwargs.get("reason")):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.no_verify needs a reason (why verification is off)")
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Turn ``ARCHIR_VERIFY`` off for a test marked ``no_verify`` (setup, call and teardown)."""
    marker = item.get_closest_marker("no_verify")
    if marker is None:
        yield
        return
    prev = os.environ.get("ARCHIR_VERIFY")
    os.environ["ARCHIR_VERIFY"] = "0"
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop("ARCHIR_VERIFY", None)
        else:
            os.environ["ARCHIR_VERIFY"] = prev
