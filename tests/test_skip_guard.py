"""The skip guard of tests/conftest.py: with ``CI`` set, any skip but a CUDA-only one fails the session."""

from pathlib import Path

import pytest

TESTS = """
import pytest

def test_passes():
    pass

@pytest.mark.cuda
def test_on_a_cuda_device_only():
    pass

def test_needs_a_missing_dependency():
    pytest.importorskip("{module}")
"""


@pytest.mark.parametrize("ci, module, failed", [
    ("true", "a_module_that_is_not_installed", True),
    ("true", "pytest", False),  # importable: only the CUDA-only test may skip
    ("", "a_module_that_is_not_installed", False),
    ("false", "a_module_that_is_not_installed", False),
])
def test_ci_fails_on_any_skip_but_cuda_only(pytester, monkeypatch, ci, module, failed):
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_dummy=TESTS.format(module=module))
    result = pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] + outcomes.get("skipped", 0) == 3
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if failed else pytest.ExitCode.OK)
    guard = "skips that fail CI"
    assert (guard in result.stdout.str()) == failed
    if failed:
        result.stdout.fnmatch_lines(["*test_needs_a_missing_dependency: Skipped: could not import*"])
