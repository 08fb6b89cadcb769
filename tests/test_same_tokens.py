"""The fast paths of a training step give the same tokens and the same records as the step-by-step ones.

The counter-based generator's keys (Python integers, cached) and CPU draws (numpy uint32) against its tensor
arithmetic; the trainer's batches, drawn many steps per ``Task.sample`` call, against one call per step for every
built-in task; and short runs' records against the step-by-step trainer in this process and against the histories
main recorded before these paths existed (``tests/golden/main-4be2e01.json``; bit for bit under the torch version and
CPU capability that wrote them, else to float tolerance).

Regenerate the golden file only when tokens or records are meant to change: ``python -m tests.test_same_tokens``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from spamlang import rng as rng_module
from spamlang.config import RunConfig
from spamlang.rng import Rng
from spamlang.task import make_task
from spamlang.training import trainer as trainer_module
from spamlang.training.loop import train
from spamlang.training.trainer import Trainer

GOLDEN = Path(__file__).parent / "golden" / "main-4be2e01.json"
#: every built-in task but text (which needs a tokenizer and a corpus: tests/test_text.py), with parameters that
#: exercise their samplers
TASKS = {"spam": {}, "spam-noisy": {"p": 0.3}, "spam-zipf": {}, "cycle": {"k": 3}, "bag": {"k": 5},
         "permutation": {}, "shift": {"s": 3}}
TOKEN_STEPS, TOKEN_BATCH, TOKEN_LEN, TOKEN_V = 300, 16, 12, 97


def run_config(name: str) -> RunConfig:
    extra = {"backbone": "gru", "optimizer": "sgd"} if name == "bag" else {}
    return RunConfig(task=name, task_params=TASKS[name], vocab_size=64, d_model=16, layers=1, batch_size=16,
                     seq_len=8, eval_sequences=32, diag_tokens=64, steps=30, eval_every=10, device="cpu", **extra)


def step_by_step_tokens(name: str) -> list[torch.Tensor]:
    task = make_task(name, TASKS[name])
    return [task.sample(TOKEN_BATCH, TOKEN_LEN, TOKEN_V, Rng(0, "train"), "cpu", offset=step * TOKEN_BATCH)
            for step in range(TOKEN_STEPS)]


def token_digest(batches: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for batch in batches:
        h.update(batch.numpy().tobytes())
    return h.hexdigest()


def history(record) -> list[dict]:
    return [{k: v.hex() if isinstance(v, float) else v for k, v in dataclasses.asdict(p).items()}
            for p in record.history]


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


# -- the generator ----------------------------------------------------------------------------------------------------
def test_python_integer_hash_is_the_tensor_hash():
    r = random.Random(0)
    values = [r.getrandbits(64) for _ in range(500)] + [0, 2**32 - 1, 2**32, 2**64 - 1]
    expected = rng_module._hash32(torch.tensor([v & 0xFFFFFFFF for v in values], dtype=torch.int64)).tolist()
    assert [rng_module._hash_int(v) for v in values] == expected


@pytest.mark.parametrize("offset", [0, 12345, 2**32 - 100, 2**40 + 3])
def test_numpy_draws_are_the_tensor_draws(offset):
    g = Rng(7, "train", "floyd", 3)
    for salt in (0x1B873593, 0x68E31DA4):
        fast = torch.from_numpy(g._bits_np(1000, offset, salt).astype("int64"))
        assert torch.equal(fast, g._bits(1000, offset, salt, torch.device("cpu")))
    assert torch.equal(g.uniform((1000,), offset=offset), g.uniform((1000,), offset=offset))


def test_keys_and_draws_are_mains(golden):
    assert Rng(0, "train").key == golden["keys"]["train"]
    assert Rng(3, 0, "val", "floyd", 8).key == golden["keys"]["val_floyd_8"]
    assert Rng(2**32 - 1, 2**40 + 5).uniform((4,), offset=2**33).tolist() == golden["keys"]["uniform"]


# -- the trainer's batches --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TASKS))
def test_prefetched_batches_are_the_step_by_step_ones_and_mains(name, golden):
    """Batches drawn ``prefetch_steps`` at a time (a window that does not divide the run, and a restart in the
    middle of one) are the per-step draws, bit for bit, and hash to what main drew."""
    reference = step_by_step_tokens(name)
    assert token_digest(reference) == golden["tokens"][name]
    t = Trainer(RunConfig(task=name, task_params=TASKS[name], vocab_size=TOKEN_V, seq_len=TOKEN_LEN,
                          batch_size=TOKEN_BATCH, steps=TOKEN_STEPS, d_model=8, layers=1, device="cpu"))
    t.prefetch_steps = 37
    for step in list(range(TOKEN_STEPS)) + [5, 250, 6]:  # then jumps back into and out of windows
        assert torch.equal(t.batch(step), reference[step]), (name, step)


# -- whole runs -------------------------------------------------------------------------------------------------------
def _step_by_step(monkeypatch):
    """The trainer as it was: one ``Task.sample`` call per step, predictable positions by boolean mask."""
    monkeypatch.setattr(trainer_module, "PREFETCH_TOKENS", 1)
    monkeypatch.setattr(trainer_module, "positions", lambda mask: mask)


@pytest.mark.parametrize("name", ["spam", "cycle", "bag"])
def test_a_run_records_the_same_bits_as_the_step_by_step_trainer(name, monkeypatch):
    fast = train(run_config(name), progress=False)
    with monkeypatch.context() as m:
        _step_by_step(m)
        slow = train(run_config(name), progress=False)
    assert history(fast) == history(slow)
    assert fast.final.loss == slow.final.loss and fast.final.coverage == slow.final.coverage


@pytest.mark.parametrize("name", list(TASKS))
def test_a_run_records_what_main_recorded(name, golden):
    """Every evaluation of a 30-step run as main recorded it: bit for bit on the torch version and CPU capability
    that wrote the file (update_cosine, now computed without a copied step, to 1e-6), to 1e-5 elsewhere."""
    same_machine = (golden["torch"], golden["cpu"]) == (torch.__version__, torch.backends.cpu.get_cpu_capability())
    got, expected = history(train(run_config(name), progress=False)), golden["runs"][name]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], str) and (key == "update_cosine" or not same_machine):
                x, y = float.fromhex(a[key]), float.fromhex(b[key])
                assert x == pytest.approx(y, rel=1e-5, abs=1e-6 if key == "update_cosine" else 1e-8), (key, a["step"])
            else:
                assert a[key] == b[key], (name, a["step"], key)


def write_golden(path: Path) -> None:
    out = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
           "keys": {"train": Rng(0, "train").key, "val_floyd_8": Rng(3, 0, "val", "floyd", 8).key,
                    "uniform": Rng(2**32 - 1, 2**40 + 5).uniform((4,), offset=2**33).tolist()},
           "tokens": {name: token_digest(step_by_step_tokens(name)) for name in TASKS},
           "runs": {name: history(train(run_config(name), progress=False)) for name in TASKS}}
    path.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_golden(Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN)
