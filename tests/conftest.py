import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("CIFARLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Seeded, offline, with a per-session decode cache: tests never download."""
    torch.manual_seed(0)
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cifarlab-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
