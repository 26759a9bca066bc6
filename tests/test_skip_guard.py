"""The skip guard of tests/conftest.py: with ``CI`` set, any skip but that of a ``cuda``-marked test on a machine
without CUDA, and any xfail, fails the session; in one process and under ``pytest -n 2`` as ``make test`` runs it."""

from pathlib import Path

import pytest
import torch

CLEAN = {"passed": 2} if torch.cuda.is_available() else {"passed": 1, "skipped": 1}  # the cuda-marked test skips

TESTS = """
import pytest

def test_passes():
    pass

@pytest.mark.cuda
def test_on_a_cuda_device_only():
    pass
"""

# test source, and the line the guard lists for it
ESCAPES = {
    "missing dependency": ('def test_missing_dependency():\n    pytest.importorskip("a_module_that_is_not_installed")',
                           "*test_missing_dependency: Skipped: could not import*"),
    "skip worded like cuda": ('def test_worded_like_cuda():\n    pytest.skip("needs a CUDA device")',
                              "*test_worded_like_cuda: Skipped: needs a CUDA device"),
    "skipif worded like cuda": ('@pytest.mark.skipif(True, reason="needs a CUDA device")\ndef test_skipif_like_cuda():'
                                '\n    pass', "*test_skipif_like_cuda: Skipped: needs a CUDA device"),
    "xfail": ('@pytest.mark.xfail(reason="a known bug")\ndef test_xfails():\n    assert False',
              "*test_xfails: xfail: a known bug"),
    "xpass": ('@pytest.mark.xfail(reason="a known bug")\ndef test_xpasses():\n    pass',
              "*test_xpasses: xfail: a known bug"),
    "imperative xfail": ('def test_calls_xfail():\n    pytest.xfail("not yet")', "*test_calls_xfail: xfail: not yet"),
}
GUARD = "skips and xfails that fail CI"


def run(pytester, monkeypatch, ci: str, escapes: list[str], xdist: bool):
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_dummy=TESTS + "".join(f"\n\n{ESCAPES[e][0]}\n" for e in escapes))
    workers = ["-n", "2"] if xdist else ["-p", "no:xdist"]
    return pytester.runpytest_inprocess(*workers, "-p", "no:cacheprovider", "-p", "no:hypothesispytest")


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_ci_fails_on_each_skip_but_cuda_only_and_on_any_xfail(pytester, monkeypatch, escape):
    result = run(pytester, monkeypatch, "true", [escape], xdist=False)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*{GUARD}*", ESCAPES[escape][1]])
    assert "test_on_a_cuda_device_only" not in result.stdout.str().split(GUARD)[1], "the cuda-marked skip is fine"


@pytest.mark.parametrize("ci", ["", "false"])
def test_outside_ci_skips_and_xfails_pass(pytester, monkeypatch, ci):
    result = run(pytester, monkeypatch, ci, sorted(ESCAPES), xdist=False)
    assert result.ret == pytest.ExitCode.OK and GUARD not in result.stdout.str()


def test_ci_accepts_the_cuda_marked_skip_alone(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", [], xdist=False)
    assert result.parseoutcomes() == CLEAN
    assert result.ret == pytest.ExitCode.OK and GUARD not in result.stdout.str()


def test_ci_guard_fails_the_session_under_xdist(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", sorted(ESCAPES), xdist=True)
    assert "2 workers" in result.stdout.str(), "the files ran under pytest-xdist"
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for _, line in ESCAPES.values():  # in the order the workers finished
        result.stdout.fnmatch_lines([f"*{GUARD}*", line])
    assert "test_on_a_cuda_device_only" not in result.stdout.str().split(GUARD)[1], "the cuda-marked skip is fine"
