"""Accelerator code paths exercised on the CPU: bf16 autocast, torch.compile of the backbone, the choice of GPU
for each local worker with a faked device count, and the GPUs Ray tasks ask for on a faked cluster."""
from __future__ import annotations

import shutil

import pytest
import torch

from spamlang.config import RunConfig
from spamlang.sweeps import executors
from spamlang.training.devices import resolve_device
from spamlang.training.loop import train
from spamlang.training.trainer import Trainer

TINY = dict(task="spam", vocab_size=64, d_model=16, layers=1, n_heads=2, seq_len=8, batch_size=32, steps=60,
            eval_every=30, eval_sequences=64, diag_tokens=32, lr=0.01, device="cpu")
#: how far a bf16 run's final test loss may be from the fp32 run's (nats): bf16 keeps 8 bits of mantissa in the
#: backbone's matmuls; the loss itself accumulates in fp32
BF16_TOLERANCE = 0.05


def test_bf16_autocast_on_cpu_stays_within_tolerance_of_fp32():
    fp32 = train(RunConfig(**TINY, precision="fp32"), progress=False)
    bf16 = train(RunConfig(**TINY, precision="bf16"), progress=False)
    assert fp32.run_id == bf16.run_id  # precision says how a run executes, not what it computes
    assert bf16.config.precision == "bf16" and bf16.status == fp32.status == "ok"
    assert abs(bf16.final.loss - fp32.final.loss) < BF16_TOLERANCE
    assert bf16.final.loss != fp32.final.loss  # the bf16 path did run
    assert fp32.final.loss == train(RunConfig(**TINY), progress=False).final.loss  # auto on the CPU is fp32


def matmul_dtypes(trainer: Trainer, tokens: torch.Tensor) -> tuple[set, torch.dtype]:
    """The output dtypes of the backbone's linear layers, and the dtype of the loss, in one step under autocast."""
    seen = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
             for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
    with trainer.autocast():
        h = trainer.forward(tokens)
        loss = trainer.model.head.loss(h.reshape(-1, h.shape[-1]), tokens.reshape(-1))
    for hook in hooks:
        hook.remove()
    return seen, loss.dtype


@pytest.mark.parametrize("head,rank", [("linear", None), ("lowrank", 2), ("tied", None)])
def test_under_bf16_autocast_the_matmuls_are_bf16_and_the_loss_fp32(head, rank):
    tokens = torch.randint(0, 64, (4, 8))
    seen, loss = matmul_dtypes(Trainer(RunConfig(**TINY, head=head, head_rank=rank, precision="bf16")), tokens)
    assert seen == {torch.bfloat16} and loss == torch.float32
    seen, loss = matmul_dtypes(Trainer(RunConfig(**TINY, head=head, head_rank=rank, precision="fp32")), tokens)
    assert seen == {torch.float32} and loss == torch.float32


def _has_compiler() -> bool:
    return any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not _has_compiler(), reason="torch.compile's CPU backend needs a C compiler")
def test_compiled_backbone_trains_on_cpu_like_the_eager_one():
    config = dict(TINY, steps=4, eval_every=4)
    try:
        compiled = train(RunConfig(**config, compile=True), progress=False)
    except Exception as exc:  # a toolchain that cannot build the kernels (missing headers, ...): not our code
        if type(exc).__module__.startswith(("torch._inductor", "torch._dynamo")):
            pytest.skip(f"torch.compile cannot build here: {type(exc).__name__}")
        raise
    eager = train(RunConfig(**config), progress=False)
    assert compiled.status == "ok" and compiled.config.compile
    assert compiled.final.loss == pytest.approx(eager.final.loss, abs=1e-3)


@pytest.fixture
def gpus(monkeypatch):
    """Fake a CUDA machine with ``n`` GPUs for the code that picks devices."""
    def fake(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return fake


def test_local_workers_are_spread_over_the_visible_gpus(gpus):
    gpus(3)
    config = RunConfig(task="spam", vocab_size=16, device="cuda")
    assert [executors._device(config, None, slot, "local") for slot in range(5)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    auto = RunConfig(task="spam", vocab_size=16)
    assert executors._device(auto, None, 4, "local") == "cuda:1"
    assert executors._device(auto, "cuda:2", 0, "local") == "cuda:2"  # an explicit GPU is kept
    assert executors._device(config, None, 1, "ray") == "cuda"  # a Ray task sees only the GPU Ray gave it
    assert executors._device(config, "cpu", 1, "local") == "cpu"
    gpus(1)
    assert executors._device(config, None, 3, "local") == "cuda"  # one GPU: shared by every worker


def test_resolve_device_with_a_faked_gpu_count(gpus):
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(Exception, match="'cuda:2' was requested but is not available"):
        resolve_device("cuda:2")
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(Exception, match="'cuda' was requested but is not available"):
        resolve_device("cuda")


class FakeRay:
    """Stands for the ``ray`` module on a cluster of ``nodes``: records the options of each task it is asked to
    start, and returns each task's arguments as its result."""

    def __init__(self, nodes: list[dict]):
        self.nodes_ = nodes
        self.requests: list[dict] = []

    def is_initialized(self):
        return True

    def nodes(self):
        return self.nodes_

    def cluster_resources(self):
        total: dict = {}
        for node in self.nodes_:
            for key, value in node["Resources"].items():
                total[key] = total.get(key, 0) + value
        return total

    def remote(self, **options):
        fake = self

        class Remote:
            def options(self, **more):
                fake.requests.append({**options, **more})
                return self

            def remote(self, *args):
                return [args]  # what the task returns: a list, as execute_group's records
        return lambda fn: Remote()

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref


@pytest.mark.parametrize("gpus,asked", [({"GPU": 2.0}, 1), ({"GPU": 1.0}, 1), ({"GPU": 0.5}, 0), ({}, 0)])
def test_ray_tasks_ask_for_a_gpu_when_the_cluster_has_one(monkeypatch, gpus, asked):
    from spamlang import record
    fake = FakeRay([{"Alive": True, "Resources": {"CPU": 4.0, **gpus}},
                    {"Alive": False, "Resources": {"CPU": 64.0}}])  # a dead node's cores are not counted
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    configs = [RunConfig(task="spam", vocab_size=v, device="auto").to_dict() for v in (16, 4096)]
    info = record.SuiteInfo(name="t", version=1, source="t.toml", sweep=())
    results = list(executors._ray([[c] for c in configs], info, 1, None))
    assert [r[0][0]["vocab_size"] for r in results] == [16, 4096] and [r[4] for r in results] == [1, 2]
    assert [r["num_gpus"] for r in fake.requests] == [asked, asked]
    assert all(1 <= r["num_cpus"] <= 4 and r["num_cpus"] == result[2] for r, result in zip(fake.requests, results))
    assert executors.ray_request({"CPU": 16.0, "GPU": 8.0}, 3) == {"num_cpus": 3, "num_gpus": 1}
    assert executors.ray_cores([{"Alive": True, "Resources": {"CPU": 2.0}},
                                {"Alive": True, "Resources": {"CPU": 6.0}}]) == 6
