"""Data-parallel training: two CPU processes (gloo) see disjoint data and end with identical weights."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_disjoint_data_identical_weights(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIFARLAB_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for epoch in ("1", "2"):
        a, b = set(r0["indices"][epoch]), set(r1["indices"][epoch])
        assert len(a) == len(b) == 200
        assert not a & b, "the two processes saw overlapping samples"
    assert r0["indices"]["1"] != r0["indices"]["2"], "the order must change between epochs"
    assert r0["weights"] == r1["weights"]
    assert (tmp_path / "run" / "result.json").exists()
