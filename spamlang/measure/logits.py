"""The LM head streamed over token chunks: logits, loss and logit gradient without ever holding all N x V logits."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from ..loss import default_chunk_size


def chunk_size(vocab_size: int, device: torch.device | str, chunk: int | None = None) -> int:
    """Tokens per chunk: ``chunk`` if given, else about 2**22 logits per chunk on the CPU (more on accelerators)."""
    return chunk or default_chunk_size(vocab_size, torch.device(device), min_rows=1)


def row_slices(n: int, step: int) -> list[slice]:
    """Consecutive slices of ``step`` rows covering 0 .. n."""
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Logits h Wᵀ + b: (c, D) x (V, D) -> (c, V)."""
    z = h @ w.T
    return z if b is None else z + b


def gradient_chunks(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                    chunk: int | None = None) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (rows, g, loss) per chunk of tokens: g = softmax(h Wᵀ + b) - onehot(y), (c, V), the logit gradient of
    each token's own cross-entropy (the batch-mean loss's gradient is g / N), and loss (c,) the per-token loss.

    h (N, D), y (N,) and w (V, D) must share a device and dtype; the chunk is computed in that dtype.
    """
    for rows in row_slices(h.shape[0], chunk_size(w.shape[0], h.device, chunk)):
        z = logits(h[rows], w, b)  # (c, V)
        target = y[rows]
        loss = torch.logsumexp(z, dim=1) - z.gather(1, target[:, None]).squeeze(1)  # (c,)
        g = F.softmax(z, dim=1)
        g[torch.arange(len(target), device=g.device), target] -= 1
        yield rows, g, loss
