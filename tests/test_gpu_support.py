"""GPU support that can be checked without a GPU: determinism settings, the device-sized evaluation group, mixed
precision on the CPU and the per-device MAML default."""
import os

import pytest
import torch

from benchmark.pipeline.episode_sets import validation_set
from benchmark.pipeline.machine import configure_determinism, determinism_state, environment

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


def test_group_size_on_cuda_follows_free_memory(monkeypatch):
    """The CUDA branch of group_size, with the free memory faked; the CPU rule is unchanged."""
    from types import SimpleNamespace

    from benchmark.pipeline.execution import group_size

    def episodes(ways, shots, queries, shape):
        return [SimpleNamespace(support_x=torch.zeros(ways * shots, *shape),
                                query_x=torch.zeros(ways * queries, *shape))]

    free = {"bytes": 80e9}
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return int(free["bytes"]), int(141e9)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    gpu, metric = torch.device("cuda:0"), SimpleNamespace(eval_group=20)
    omni = episodes(5, 5, 15, (1, 28, 28))  # 78,400 input values: ~160 MB of estimated activations
    assert group_size(metric, omni, device=gpu) == 64  # 124 would fit: the cap
    assert asked == [gpu]
    free["bytes"] = 8e9
    assert group_size(metric, omni, device=gpu) == 12  # a quarter of 8 GB
    free["bytes"] = 1e9
    assert group_size(metric, omni, device=gpu) == 1
    free["bytes"] = 139e9
    rgb = episodes(5, 1, 15, (3, 84, 84))
    assert group_size(metric, rgb, device=gpu) == 10
    resnet = SimpleNamespace(eval_group=20, ctx=SimpleNamespace(backbone_name="resnet12"))
    assert group_size(resnet, rgb, device=gpu) == 2
    assert group_size(metric, omni, group=7, device=gpu) == 7  # an explicit group is kept when it fits
    assert group_size(SimpleNamespace(eval_group=1), omni, device=gpu) == 1  # a looped predict_many stays 1
    # CPU: today's rule, whatever the GPU would say
    assert group_size(metric, omni, device=CPU) == group_size(metric, omni) == 20
    assert group_size(metric, rgb, device=CPU) == 1


def test_maml_vectorize_default_is_chosen_by_device():
    from methods.maml import MAML, MAMLHyper

    assert MAMLHyper().vectorize is None  # "by device" until the method is built
    assert MAML.vectorize_default(CPU) is False and MAML.vectorize_default(torch.device("cuda:0")) is True
    from methods.base import Context, Setting

    def tiny_ctx():  # conv4-strided on 12x12 inputs, on the CPU
        return Context(setting=Setting("omniglot", 3, 2), image_shape=(1, 12, 12), backbone_name="conv4-strided",
                       sampler=None, eval_seed=None, device=CPU, seed=0, profile="smoke")

    hp = MAML.hyper("smoke", Setting("omniglot", 3, 2))
    m = MAML(hp, tiny_ctx())
    assert m.hp.vectorize is False and hp.vectorize is False  # resolved in the recorded hyperparameters too
    explicit = MAML(MAML.hyper("smoke", Setting("omniglot", 3, 2)).replace(vectorize=True), tiny_ctx())
    assert explicit.hp.vectorize is True


def test_bf16_protonet_is_close_to_fp32_on_the_same_episodes(omniglot, tmp_path):
    from benchmark.kit.episodes import EpisodeSet
    from benchmark.pipeline import RunConfig, prepare
    from benchmark.pipeline.method_context import make_context
    from benchmark.pipeline.training import Checkpointing, Trainer, autocast, evaluate, seed_everything

    over = (("train_steps", 10), ("val_every", 5), ("train_ways", 5), ("train_queries", 5))
    cfg = RunConfig("protonet", "omniglot", 5, 1, profile="smoke", val_episodes=5, overrides=over)
    test = EpisodeSet(omniglot, "test", 5, 1, 15, 0, 30, stream="test")
    out = {}
    for precision in ("fp32", "bf16"):
        prepared = prepare(cfg)
        seed_everything(0)
        ctx = make_context(prepared, CPU)
        m = prepared.cls(prepared.hp, ctx)
        t = Trainer(m, prepared.hp, ctx, validation_set(prepared), Checkpointing(tmp_path / f"{precision}.pt"), precision=precision)
        t.train()
        t.restore_best()
        acc, _ = evaluate(m, test, CPU, precision=precision)
        out[precision] = (100 * acc.mean(), [r["train_loss"] for r in t.state["curve"]])
    (fp32, loss32), (bf16, loss16) = out["fp32"], out["bf16"]
    assert fp32 > 50 and abs(bf16 - fp32) < 5, (fp32, bf16)
    assert loss32 != loss16  # bf16 was in force: the training losses differ
    with autocast(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast(CPU, "fp16")
