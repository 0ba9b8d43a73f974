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
    import torch.utils.deterministic

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)  # restored after
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory",
                        torch.utils.deterministic.fill_uninitialized_memory)
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
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults, which a CUDA run turns off
    torch.utils.deterministic.fill_uninitialized_memory = True
    dev = torch.device("cuda:0")
    out = configure_determinism(dev)
    assert out == {"deterministic": True, "deterministic_warn_only": True, "cudnn_benchmark": False,
                   "cudnn_deterministic": True, "cublas_workspace_config": ":4096:8",
                   "fill_uninitialized_memory": False, "tf32_convolutions": False, "tf32_matmul": False}
    assert not torch.backends.cudnn.allow_tf32 and not torch.utils.deterministic.fill_uninitialized_memory
    assert environment(CPU).get("tf32_convolutions") is None  # recorded for CUDA runs only
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


def test_group_size_on_cuda_follows_total_memory_on_a_ladder_never_free_memory(monkeypatch):
    """The CUDA branch of group_size, with the device's total memory faked: the largest ladder size whose estimate
    fits an eighth of it; the free memory is never asked (it changes with earlier runs and packed neighbours); the
    CPU rule is unchanged."""
    from types import SimpleNamespace

    from benchmark.pipeline.execution import EVAL_GROUP_LADDER, group_size

    def episodes(ways, shots, queries, shape):
        return [SimpleNamespace(support_x=torch.zeros(ways * shots, *shape),
                                query_x=torch.zeros(ways * queries, *shape))]

    total = {"bytes": 141e9}
    asked = []

    def properties(device):
        asked.append(device)
        return SimpleNamespace(total_memory=int(total["bytes"]))

    def free_memory(device=None):
        raise AssertionError("group_size must not depend on the free memory")

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", free_memory)
    gpu, metric = torch.device("cuda:0"), SimpleNamespace(eval_group=20)
    omni = episodes(5, 5, 15, (1, 28, 28))  # 78,400 input values: ~160 MB of estimated activations
    assert group_size(metric, omni, device=gpu) == 64  # 109 would fit: the cap
    assert asked == [gpu]
    total["bytes"] = 16e9
    assert group_size(metric, omni, device=gpu) == 8  # 12 fit an eighth of 16 GB: the ladder's 8
    total["bytes"] = 1e9
    assert group_size(metric, omni, device=gpu) == 1
    total["bytes"] = 141e9
    rgb = episodes(5, 1, 15, (3, 84, 84))  # ~3.5 GB per episode: 5 fit, the ladder's 4
    assert group_size(metric, rgb, device=gpu) == 4
    resnet = SimpleNamespace(eval_group=20, ctx=SimpleNamespace(backbone_name="resnet12"))
    assert group_size(resnet, rgb, device=gpu) == 1
    lstm = SimpleNamespace(eval_group=20, eval_episode_bytes=int(1.6e9))  # per-episode state beyond activations
    assert group_size(lstm, omni, device=gpu) == 8
    assert group_size(metric, omni, group=7, device=gpu) == 4  # an explicit group: the ladder's size under it
    assert group_size(SimpleNamespace(eval_group=1), omni, device=gpu) == 1  # a looped predict_many stays 1
    assert all(group_size(metric, omni, group=g, device=gpu) in EVAL_GROUP_LADDER for g in range(1, 70))
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
