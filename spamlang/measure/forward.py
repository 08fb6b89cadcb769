"""The backbone's part: last hidden states, targets and positions of token windows, in batches of windows."""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from spamlang.errors import SpamLangError
from spamlang.measure.logits import logits

#: largest relative difference allowed between the model's own logits and H Wᵀ + b
LINEAR_TOLERANCE = 1e-3


def _hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads: the base model's last hidden state (after its final norm), (B, T, D)."""
    return model.base_model(input_ids=ids).last_hidden_state


@torch.no_grad()
def check_linear_head(model, window: np.ndarray, weight: torch.Tensor, bias: torch.Tensor | None,
                      device: torch.device, name: str) -> None:
    """SpamLangError unless the model's logits on ``window`` are its last hidden state times W (plus bias): a head
    with soft-capping or a logit scale is not the linear map the measurement assumes."""
    ids = torch.as_tensor(window[None], device=device)
    own = model(input_ids=ids).logits[0].double()  # (T, V)
    ours = logits(_hidden(model, ids)[0].double(), weight.double(), None if bias is None else bias.double())
    error = float((own - ours).abs().max() / own.abs().max().clamp(min=1e-30))
    if error > LINEAR_TOLERANCE:
        raise SpamLangError(f"{name}: its logits are not its last hidden state times its output embedding (relative "
                            f"difference {error:.2g}; soft-capping or a logit scale?), which the measurement needs")


@torch.no_grad()
def hidden_states(model, windows: np.ndarray, n_tokens: int, batch_size: int, device: torch.device,
                  dtype: torch.dtype, progress: bool = False, desc: str = "") -> tuple[torch.Tensor, ...]:
    """(H (N, D) in ``dtype``, targets (N,), positions (N,), seconds) for the first N = ``n_tokens`` predicted
    tokens of ``windows`` (W, T); a position is the number of context tokens before its target (1 .. T - 1)."""
    n_windows, seq_len = windows.shape
    hidden, targets = [], []
    start = time.perf_counter()
    with tqdm(total=n_tokens, unit="tok", unit_scale=True, disable=not progress, desc=desc) as bar:
        for i in range(0, n_windows, batch_size):
            ids = torch.as_tensor(windows[i:i + batch_size], device=device)  # (B, T)
            h = _hidden(model, ids)[:, :-1]  # (B, T - 1, D): the states that predict tokens 1 .. T - 1
            hidden.append(h.reshape(-1, h.shape[-1]).to(dtype))
            targets.append(ids[:, 1:].reshape(-1))
            bar.update(min(h.shape[0] * h.shape[1], n_tokens - bar.n))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    h, y = torch.cat(hidden)[:n_tokens], torch.cat(targets)[:n_tokens]
    if not torch.isfinite(h).all():
        raise SpamLangError("the model's hidden states hold NaN or infinity (try --dtype float32)")
    positions = torch.arange(1, seq_len, device=device).repeat(n_windows)[:n_tokens]
    return h, y, positions, seconds
