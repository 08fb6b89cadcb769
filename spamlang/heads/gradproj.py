"""The gradient-only control: a full-rank forward whose backward reaches the backbone through rank r only."""
from __future__ import annotations

import torch

from spamlang.heads.base import register_head
from spamlang.heads.linear import LinearHead
from spamlang.loss import compute_dtype, linear_cross_entropy, logit_gradient


class ProjectGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by the projector basis @ basisᵀ (a batch of bases
    (K, D, r) projects a batch of gradients (K, N, D), as ensembles need)."""

    @staticmethod
    def forward(ctx, h, basis):
        ctx.save_for_backward(basis)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        (basis,) = ctx.saved_tensors  # (D, r) or (K, D, r)
        return (grad.to(basis.dtype) @ basis @ basis.mT).to(grad.dtype), None  # (N, D) or (K, N, D)


def top_right_singular_vectors(w: torch.Tensor, r: int) -> torch.Tensor:
    """(D, r) orthonormal basis of the top-r right singular vectors of w (V, D), from eigh of wᵀw (D x D)."""
    with torch.autocast(w.device.type, enabled=False):
        w = w.detach().to(compute_dtype(w))
        _, vecs = torch.linalg.eigh((w.T @ w).double())  # (D, D), ascending eigenvalues
    return vecs[:, -r:]


@register_head
class GradProjHead(LinearHead):
    """Gradient-only control: full-rank W (V x D) forward; the backbone receives G W P_r, not G W.

    P_r = V_r V_rᵀ projects R^D onto the top-r right singular vectors of the current W (recomputed each forward
    from eigh of WᵀW, detached): the subspace a rank-r factorised head W = A·B passes gradient through. W's own
    gradient stays Gᵀh. So the head has the expressivity of full rank and the gradient bottleneck of rank r.
    """

    name = "gradproj"
    uses_rank = True

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        super().__init__(vocab_size, d_model, rank, embedding, params)
        self.r = rank

    @classmethod
    def train_macs(cls, vocab_size, d_model, rank, params):
        """3 V D, and 2 D r for projecting the backbone's gradient; the eigh of WᵀW, once per step (V D² + O(D³)),
        is not per position and is left out."""
        return 3.0 * vocab_size * d_model + 2.0 * d_model * rank

    @property
    def rank(self) -> int:
        return self.r

    def projected(self, h: torch.Tensor) -> torch.Tensor:
        """h itself, whose gradient is projected onto the top-r right singular subspace of W."""
        return ProjectGrad.apply(h, top_right_singular_vectors(self.weight, self.r).to(compute_dtype(h)))

    def loss(self, h, targets):
        return linear_cross_entropy(self.projected(h), self.weight, targets)

    @torch.no_grad()
    def logit_gradient(self, h, targets):
        w = self.weight.double()
        u, _, _ = torch.linalg.svd(w, full_matrices=False)  # (V, D), singular values descending
        return logit_gradient(h.double() @ w.T, targets), u[:, : self.r]
