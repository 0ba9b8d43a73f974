"""GPU support that can be checked without a GPU: determinism settings, the device-sized evaluation group, mixed
precision on the CPU and the per-device MAML default."""
import os

import pytest
import torch

from benchmark.machine import configure_determinism, determinism_state, environment

CPU = torch.device("cpu")


@pytest.fixture
def restore_determinism(monkeypatch):
    """Put PyTorch's global determinism flags back after a test that sets them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def test_determinism_changes_nothing_on_the_cpu(restore_determinism):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    first = configure_determinism(CPU)
    again = configure_determinism("cpu", deterministic=True)
    assert first == again == determinism_state(CPU) == {"deterministic": before[0],
                                                         "deterministic_warn_only": False}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    env = environment(CPU)
    assert env["deterministic"] is before[0] and "cudnn_deterministic" not in env


def test_determinism_on_cuda_sets_the_flags_once(restore_determinism, monkeypatch):
    # The CUDA branch only sets flags and an environment variable, none of which needs a GPU.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    dev = torch.device("cuda:0")
    out = configure_determinism(dev)
    assert out == {"deterministic": True, "deterministic_warn_only": True, "cudnn_benchmark": False,
                   "cudnn_deterministic": True, "cublas_workspace_config": ":4096:8"}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    assert configure_determinism(dev) == out == determinism_state(dev)  # idempotent
    strict = configure_determinism(dev, warn_only=False)
    assert strict["deterministic_warn_only"] is False
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other valid value is kept
    assert configure_determinism(dev)["cublas_workspace_config"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "bogus")  # a late setting is reported
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    late = configure_determinism(dev)
    assert late["cublas_workspace_config"] == ":4096:8" and "cublas_note" in late
