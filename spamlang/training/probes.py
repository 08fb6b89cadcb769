"""Gradient probes of one run during training: how much of the logit gradient its head lets through (destroyed ratio,
kept cosine, spectrum share), the reached logit scale, and the cosine of the optimizer's next step with the ideal one.
The science: docs/science.md.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from spamlang.diagnostics import gradient_diagnostics, spectrum_share
from spamlang.training.model import LanguageModel
from spamlang.training.trainer import Trainer, learning_rate, make_optimizer


class _DiagnosticLogits(nn.Module):
    """tokens (B, T) -> the head's logits (``Head.logits``) at the first ``n`` predictable positions: the model as a
    function of its parameters, for ``torch.func``."""

    def __init__(self, model: LanguageModel, mask: torch.Tensor, n: int):
        super().__init__()
        self.model, self.mask, self.n = model, mask, n

    def forward(self, tokens):
        h = self.model.hidden(tokens[:, :-1])[:, self.mask]  # (B, P, D)
        return self.model.head.logits(h.reshape(-1, h.shape[-1])[:self.n])


class GradientProbe:
    """The gradient diagnostics of a trainer's model on the first ``diag_tokens`` predictable positions of a batch."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    @property
    def diag_rows(self) -> int:
        """Sequences that hold ``diag_tokens`` predictable positions."""
        return -(-self.trainer.config.diag_tokens // int(self.trainer.mask.sum()))

    def diagnostic_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (float32) and targets of the first ``diag_tokens`` predictable positions of ``tokens``."""
        with torch.no_grad():
            h, y = self.trainer.split(tokens[:self.diag_rows])
        return h[:self.trainer.config.diag_tokens].float(), y[:self.trainer.config.diag_tokens]

    def logit_gradient(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's (G, Q) on the first ``diag_tokens`` predictable positions of ``tokens``."""
        return self.trainer.model.head.logit_gradient(*self.diagnostic_states(tokens))

    def diagnostics(self, batch: torch.Tensor, next_step: int) -> dict:
        """On the first ``diag_tokens`` predictable positions of ``batch`` (the val stream, in training): the gradient
        diagnostics (destroyed ratio, kept cosine, baseline), ``grad_top_share`` (share of ‖G‖² in its top 2·rank
        singular values), ``logit_scale`` (median per-context half-range of the logits) and ``update_cosine`` (see
        :meth:`update_cosine`)."""
        tokens, head = batch[:self.diag_rows], self.trainer.model.head
        h, y = self.diagnostic_states(tokens)
        g, q = head.logit_gradient(h, y)
        with torch.no_grad():
            log_probs = head.log_probs(h)  # (M, V): the logits up to a per-context shift
        half_range = (log_probs.amax(dim=1) - log_probs.amin(dim=1)).double() / 2  # (M,)
        return {**gradient_diagnostics(g, q), "grad_top_share": spectrum_share(g, 2 * head.rank),
                "logit_scale": float(half_range.quantile(0.5)), "update_cosine": self.update_cosine(tokens, g, next_step)}

    def update_cosine(self, tokens: torch.Tensor, g: torch.Tensor, step: int) -> float | None:
        """cos(ΔZ, −G): ΔZ is the first-order change of the head's logits (``Head.logits``) on the diagnostic positions
        of ``tokens`` under the step the optimizer would take at ``step`` on those positions' loss (ΔZ = J Δθ, with J
        the Jacobian of the logits in all parameters, so ΔH Wᵀ + H ΔWᵀ for a linear head), G (M, V) the logit
        gradient there. The step is taken on a copy of the model and optimizer state: training is not touched. None
        when the head has no ``logits``, an operation has no forward-mode derivative, or ΔZ is 0."""
        trainer = self.trainer
        c = trainer.config
        model = copy.deepcopy(trainer.model)
        optimizer = make_optimizer(c, model.parameters(), trainer.device)
        optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))  # deep: loading may alias tensors
        h, y = trainer.split(tokens, model.hidden)  # every position of the diag_rows sequences: keep diag_tokens, as G
        trainer.optimize(model, optimizer, h[:c.diag_tokens], y[:c.diag_tokens], learning_rate(c, step))
        # one name per parameter and no weight tying: a module shared by backbone and head (tied) is swapped once
        params = dict(trainer.model.named_parameters())
        delta = {f"model.{k}": (p.detach() - params[k].detach()) for k, p in model.named_parameters()}
        primals = {f"model.{k}": p.detach() for k, p in params.items()}
        logits = _DiagnosticLogits(trainer.model, trainer.mask, c.diag_tokens)

        def f(p):
            return torch.func.functional_call(logits, p, (tokens,), tie_weights=False)

        # forward-mode AD through attention and cuDNN RNNs needs their composite (math) kernels
        with sdpa_kernel(SDPBackend.MATH), torch.backends.cudnn.flags(enabled=False):
            try:
                _, dz = torch.func.jvp(f, (primals,), (delta,))
            except NotImplementedError:
                return None
        dz, g = dz.detach().double().reshape(g.shape), g.double()
        norms = dz.norm() * g.norm()
        return float(-(dz * g).sum() / norms) if norms > 0 else None
