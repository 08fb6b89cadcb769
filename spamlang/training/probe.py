"""Gradient diagnostics of a trained model: how much of the logit gradient its head lets through, and the spectrum."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from spamlang import record
from spamlang.config import RunConfig
from spamlang.diagnostics import gradient_diagnostics, spectrum_share
from spamlang.errors import SpamLangError
from spamlang.rng import Rng
from spamlang.system.threads import choose, step_flops, using
from spamlang.training.probes import GradientProbe
from spamlang.training.trainer import Trainer


def locate(path: str | Path) -> tuple[Path, Path]:
    """(record, checkpoint) from either file: ``<run_id>.json`` and ``<run_id>.pt`` live side by side."""
    path = Path(path)
    rec, ckpt = path.with_suffix(".json"), path.with_suffix(".pt")
    for p in (rec, ckpt):
        if not p.is_file():
            raise SpamLangError(f"{p} not found (probe needs a run record and its checkpoint, "
                                f"written by 'spamlang train --save-checkpoint')")
    return rec, ckpt


def probe(path: str | Path, batches: int = 4) -> dict:
    """Diagnostics of the trained model over ``batches`` batches of ``diag_tokens`` predictable positions, drawn from
    a ``probe`` stream of the task (seeded by the run's eval seed, apart from its val and test streams)."""
    rec_path, ckpt = locate(path)
    rec = record.read(rec_path)
    config = dataclasses.replace(rec.config, device="cpu", compile=False)
    with using(choose(step_flops(config))):
        return _probe(rec, config, ckpt, batches)


def _probe(rec: record.RunRecord, config: RunConfig, ckpt: Path, batches: int) -> dict:
    trainer = Trainer(config)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        trainer.model.load_state_dict(state)
    except Exception as exc:  # a foreign or truncated file: say which
        raise SpamLangError(f"{ckpt}: not a checkpoint of this run ({type(exc).__name__}: {exc})") from None
    trainer.model.eval()
    gradients = GradientProbe(trainer)
    rows = gradients.diag_rows
    tokens = trainer.task.sample(rows * batches, config.seq_len, config.vocab_size, Rng(config.eval_seed, "probe"))
    results = []
    for b in range(batches):
        G, Q = gradients.logit_gradient(tokens[b * rows:(b + 1) * rows])
        results.append({**gradient_diagnostics(G, Q),
                        "spectrum_top_2r": spectrum_share(G, 2 * trainer.model.head.rank)})
    mean = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
    return {"run_id": rec.run_id, "task": config.task, "vocab_size": config.vocab_size, "head": config.head,
            "rank": trainer.model.head.rank, "batches": batches, "tokens_per_batch": config.diag_tokens, **mean}
