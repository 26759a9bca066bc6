import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("CIFARLAB_TEST_THREADS", "1")))

pytest_plugins = ["pytester"]  # tests/test_skip_guard.py runs pytest on test files it writes

CUDA_ONLY = "needs a CUDA device"  # the reason of every `cuda`-marked skip, the one skip CI accepts


def pytest_configure(config):
    config.addinivalue_line("markers", f"cuda: runs only on a CUDA device (elsewhere skipped: {CUDA_ONLY!r})")
    if os.environ.get("CI", "").lower() not in ("", "0", "false") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(SkipGuard(), "cifarlab-skip-guard")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(pytest.mark.skip(reason=CUDA_ONLY))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each report says whether its test carries the ``cuda`` marker on a machine without CUDA (an attribute of
    the report, so that it reaches the controller of ``pytest -n``)."""
    report = yield
    report.cuda_only_skip = item.get_closest_marker("cuda") is not None and not torch.cuda.is_available()
    return report


class SkipGuard:
    """In CI (``CI`` set), a skip other than that of a ``cuda``-marked test on a machine without CUDA, and any
    xfail, fails the session: a missing test dependency, an unmet condition or an expected failure must not pass
    as green. It runs where the reports arrive: in the one process, or in the controller of ``pytest -n``."""

    def __init__(self):
        self.escapes: list[str] = []

    def _note(self, report):
        if hasattr(report, "wasxfail"):
            self.escapes.append(f"{report.nodeid}: xfail{': ' + report.wasxfail if report.wasxfail else ''}")
        elif report.skipped and not getattr(report, "cuda_only_skip", False):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.escapes.append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report):
        self._note(report)

    def pytest_collectreport(self, report):
        self._note(report)

    def pytest_sessionfinish(self, session):
        if self.escapes and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.escapes:
            terminalreporter.write_sep("=", "skips and xfails that fail CI (only cuda-marked tests may skip, "
                                            "where there is no CUDA)", red=True)
            for line in self.escapes:
                terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Seeded, offline, with a per-session decode cache: tests never download."""
    torch.manual_seed(0)
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
