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


class SkipGuard:
    """In CI (``CI`` set), a skip other than CUDA-only fails the session: a missing test dependency or an
    unmet condition must not pass as green."""

    def __init__(self):
        self.skips: list[str] = []

    def _note(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if reason != f"Skipped: {CUDA_ONLY}":
                self.skips.append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report):
        self._note(report)

    def pytest_collectreport(self, report):
        self._note(report)

    def pytest_sessionfinish(self, session):
        if self.skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.skips:
            terminalreporter.write_sep("=", "skips that fail CI (only CUDA-only tests may skip)", red=True)
            for line in self.skips:
                terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Seeded, offline, with a per-session decode cache: tests never download."""
    torch.manual_seed(0)
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
