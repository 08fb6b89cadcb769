"""The LM head streamed over token chunks: logits, loss and logit gradient without ever holding all N x V logits."""
from __future__ import annotations

from typing import Iterator

import torch

from spamlang.loss import default_chunk_size

#: fewest tokens per chunk (at V = 50,257: 51 MiB of float32 logits)
MIN_ROWS = 256


def chunk_size(vocab_size: int, device: torch.device | str, chunk: int | None = None) -> int:
    """Tokens per chunk: ``chunk`` if given, else about 2**22 logits per chunk on the CPU (more on accelerators) and
    at least MIN_ROWS tokens, so that each pass over the V x D head serves enough rows to run at full speed."""
    return chunk or default_chunk_size(vocab_size, torch.device(device), min_rows=MIN_ROWS)


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

    h (N, D), y (N,) and w (V, D) must share a device and dtype; the chunk is computed in that dtype, in one (c, V)
    buffer that the next chunk overwrites (use or copy g before asking for the next one).
    """
    step = chunk_size(w.shape[0], h.device, chunk)
    buf = torch.empty(min(step, h.shape[0]), w.shape[0], dtype=h.dtype, device=h.device)  # (c, V)
    for rows in row_slices(h.shape[0], step):
        g = buf[:rows.stop - rows.start]
        torch.mm(h[rows], w.T, out=g)  # logits, turned into the gradient in place: one exp pass
        if b is not None:
            g += b
        target = y[rows]
        index = torch.arange(len(target), device=g.device)
        target_logit = g[index, target]  # (c,)
        row_max = g.amax(dim=1)  # (c,)
        g.sub_(row_max[:, None]).exp_()
        row_sum = g.sum(dim=1)  # (c,)
        g.div_(row_sum[:, None])
        g[index, target] -= 1
        yield rows, g, row_max + row_sum.log() - target_logit
