"""Accelerator code paths exercised on the CPU: bf16 autocast, torch.compile of the backbone, and the choice of GPU
for each local worker with a faked device count."""
from __future__ import annotations

import shutil

import pytest
import torch

from spamlang import runner
from spamlang.config import RunConfig
from spamlang.harness import Trainer, resolve_device, train

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
    assert [runner._device(config, None, slot, "local") for slot in range(5)] == \
        ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    auto = RunConfig(task="spam", vocab_size=16)
    assert runner._device(auto, None, 4, "local") == "cuda:1"
    assert runner._device(auto, "cuda:2", 0, "local") == "cuda:2"  # an explicit GPU is kept
    assert runner._device(config, None, 1, "ray") == "cuda"  # a Ray task sees only the GPU Ray gave it
    assert runner._device(config, "cpu", 1, "local") == "cpu"
    gpus(1)
    assert runner._device(config, None, 3, "local") == "cuda"  # one GPU: shared by every worker


def test_resolve_device_with_a_faked_gpu_count(gpus):
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(Exception, match="'cuda:2' was requested but is not available"):
        resolve_device("cuda:2")
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(Exception, match="'cuda' was requested but is not available"):
        resolve_device("cuda")
