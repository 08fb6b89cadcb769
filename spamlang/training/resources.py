"""Memory admission before a run: its estimated memory against what the machine has available.

The estimates are deliberately simple upper-end figures of what dominates, so that a run which cannot fit is refused
in one line before it starts, instead of failing in the allocator minutes later (what the machine has:
:mod:`spamlang.system.capacity`).
"""
from __future__ import annotations

from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.system.capacity import available_memory, human

FLOAT = 4  # bytes of a float32
#: a run is refused when its estimate exceeds this share of the memory available
HEADROOM = 0.9
#: bytes per held-out token: two int64 streams (16), float64 per-position losses of the model and two baselines (24),
#: float32 chunks (4), hits and seen flags (2), and the copies made while they are joined and masked (18)
EVAL_BYTES_PER_TOKEN = 64


def parameter_count(config: RunConfig) -> int:
    """Exact parameter count of the run's model, built on the ``meta`` device (no memory is allocated)."""
    import torch

    from spamlang.training.model import LanguageModel
    with torch.device("meta"):
        model = LanguageModel(config)
    return sum(p.numel() for p in model.parameters())


def run_memory(config: RunConfig, device_type: str = "cpu") -> dict[str, int]:
    """Estimated bytes of one training run, by part: ``parameters`` (weights, gradients and two AdamW moments, float32,
    twice: the ``update_cosine`` diagnostic holds its own gradients, step and forward-mode tangents),
    ``activations`` (what the backbone keeps for backward, attention scores included), ``logits`` (the largest block
    of logits alive at once: a training chunk of the fused loss, an evaluation chunk, or the diagnostics' logit
    gradient with the SVD of the head matrix), ``evaluation`` (the val and test streams, int64, and what an
    evaluation keeps per position: float64 losses of the model and of the Bayes and unigram baselines, hits, the
    float32 chunks before they are joined) and ``total``."""
    import torch

    from spamlang.loss import default_chunk_size
    V, D, T, B = config.vocab_size, config.d_model, config.seq_len, config.batch_size
    params = parameter_count(config)
    per_token_layer = 16 * max(D, config.width) + config.n_heads * T  # residual, MLP (4D), norms; attention scores
    activations = B * T * config.layers * per_token_layer * FLOAT
    chunk = default_chunk_size(V, torch.device(device_type)) * V
    train_logits = 3 * chunk * FLOAT  # logits, probabilities, gradient
    eval_logits = 3 * max(1 << 22, T * V) * FLOAT
    diagnostics = 3 * config.diag_tokens * V * 8 + 3 * V * max(D, config.width) * 8  # float64 G, G Q Qᵀ; SVD of W
    evaluation = config.eval_sequences * T * EVAL_BYTES_PER_TOKEN
    parts = {"parameters": 2 * 4 * params * FLOAT, "activations": activations,
             "logits": max(train_logits, eval_logits, diagnostics), "evaluation": evaluation}
    return {**parts, "total": sum(parts.values())}


def check_run(config: RunConfig, device_type: str = "cpu", index: int | None = None, copies: int = 1) -> None:
    """Refuse (SpamLangError, with the numbers) a run whose estimated memory, times ``copies`` running side by side,
    exceeds what the device has available."""
    need = run_memory(config, device_type)
    free = available_memory(device_type, index)
    if free is None or copies * need["total"] <= HEADROOM * free:
        return
    parts = ", ".join(f"{k} {human(v)}" for k, v in need.items() if k != "total")
    side = f" x {copies} runs side by side" if copies > 1 else ""
    raise SpamLangError(f"a run of V={config.vocab_size}, D={config.d_model}, head {config.head} needs about "
                        f"{human(need['total'])}{side} ({parts}) but {device_type} has {human(free)} available; "
                        f"lower the vocabulary size, width, batch size, eval sequences or workers")
