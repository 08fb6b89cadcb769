"""A counter-based random number generator that gives bit-identical draws on every device.

Each draw is a hash of (key, position), computed with exact 64-bit integer arithmetic on whatever device the output
lives on, so tokens do not depend on the machine, the device or how a corpus is chunked: element ``i`` of a draw is
the same whether 10 or 10 million elements are drawn. Keys are derived by hashing a seed and a path of labels.
"""
from __future__ import annotations

import functools
import zlib

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), without overflowing int64."""
    lo = (x & 0xFFFF) * c
    hi = (((x >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_int(value: int) -> int:
    """:func:`_hash32` of one value, on Python integers (the same bits, without a tensor per operation)."""
    x = value & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _hash_np(x: np.ndarray) -> np.ndarray:
    """:func:`_hash32` on a uint32 array, in place (uint32 products wrap modulo 2**32: the same bits)."""
    x ^= x >> 16
    x *= np.uint32(0x7FEB352D)
    x ^= x >> 15
    x *= np.uint32(0x846CA68B)
    x ^= x >> 16
    return x


def _label(label: int | str) -> int:
    return zlib.crc32(label.encode()) if isinstance(label, str) else int(label)


@functools.lru_cache(maxsize=4096)
def _key(seed: int, path: tuple) -> int:
    """The key of the stream (seed, *path): the seed's hash folded with each label's, on Python integers (cached:
    the harness derives the same few streams' keys at every step)."""
    key = _hash_int(seed ^ 0x9E3779B9)
    for label in path:
        v = _label(label)
        for word in (v & _MASK32, (v >> 32) & _MASK32):  # fold 64-bit labels
            key = _hash_int(key ^ _hash_int(word + 0x632BE5AB))
    return key


class Rng:
    """A stream of random numbers named by a seed and a path, e.g. ``Rng(0, "train", step)``."""

    def __init__(self, seed: int, *path: int | str):
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.key, self.seed, self.path = _key(seed, path), seed, path

    def child(self, *path: int | str) -> "Rng":
        return Rng(self.seed, *self.path, *path)

    def _bits_np(self, numel: int, offset: int, salt: int) -> np.ndarray:
        """:meth:`_bits` on the CPU as uint32: the same integers in a dozen numpy operations instead of ~80 tensor
        ones (the per-operation cost, not the arithmetic, is what a training step's small draws pay)."""
        counters = np.arange(offset, offset + numel, dtype=np.uint64)
        lo = (counters & np.uint64(_MASK32)).astype(np.uint32)
        hi = (counters >> np.uint64(32)).astype(np.uint32)
        lo ^= np.uint32((self.key + salt) & _MASK32)
        hi ^= np.uint32(salt ^ 0x5BD1E995)
        x = _hash_np(lo)
        x ^= _hash_np(hi)
        return _hash_np(x)

    def _bits(self, numel: int, offset: int, salt: int, device) -> torch.Tensor:
        counters = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
        lo, hi = counters & _MASK32, counters >> 32
        return _hash32(_hash32(lo ^ ((self.key + salt) & _MASK32)) ^ _hash32(hi ^ salt ^ 0x5BD1E995))

    def uniform(self, shape, device="cpu", offset: int = 0) -> torch.Tensor:
        """float64 uniform on [0, 1), 53 random bits each; element i is draw number ``offset + i``."""
        device = torch.device(device)
        work = torch.device("cpu") if device.type == "mps" else device  # MPS has no float64
        numel = 1
        for s in shape:
            numel *= s
        if work.type == "cpu":  # exact either way: a 53-bit integer times a power of two
            a = self._bits_np(numel, offset, 0x1B873593) >> np.uint32(5)  # 27 bits
            b = self._bits_np(numel, offset, 0x68E31DA4) >> np.uint32(6)  # 26 bits
            u = torch.from_numpy((a * 67108864.0 + b) / 9007199254740992.0)
        else:
            a = self._bits(numel, offset, 0x1B873593, work) >> 5   # 27 bits
            b = self._bits(numel, offset, 0x68E31DA4, work) >> 6   # 26 bits
            u = (a.double() * 67108864.0 + b.double()) / 9007199254740992.0
        return u.reshape(shape).to(device) if work != device else u.reshape(shape)

    def integers(self, high: int, shape, device="cpu", offset: int = 0) -> torch.Tensor:
        """int64 uniform on [0, high) (bias below 2**-22 for any high < 2**31)."""
        u = self.uniform(shape, "cpu" if torch.device(device).type == "mps" else device, offset)
        return torch.clamp((u * high).long(), max=high - 1).to(device)
