"""Gradient probes of one run during training: how much of the logit gradient its head lets through (destroyed ratio,
kept cosine, spectrum share), the reached logit scale, and the cosine of the optimizer's next step with the ideal one.
The science: docs/science.md.
"""
from __future__ import annotations

import copy
import math

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
                "logit_scale": float(half_range.quantile(0.5)),
                "update_cosine": self.update_cosine(tokens, g, next_step)}

    def update_cosine(self, tokens: torch.Tensor, g: torch.Tensor, step: int) -> float | None:
        """cos(ΔZ, −G): ΔZ is the first-order change of the head's logits (``Head.logits``) on the diagnostic positions
        of ``tokens`` under the step the optimizer would take at ``step`` on those positions' loss (ΔZ = J Δθ, with J
        the Jacobian of the logits in all parameters, so ΔH Wᵀ + H ΔWᵀ for a linear head), G (M, V) the logit
        gradient there. The step Δθ is computed from the loss's gradients and the optimizer's state without changing
        either (:func:`next_update`): training is not touched. None when the head has no ``logits``, an operation
        has no forward-mode derivative, or ΔZ is 0."""
        trainer = self.trainer
        c = trainer.config
        # one name per parameter and no weight tying: a module shared by backbone and head (tied) is swapped once
        params = dict(trainer.model.named_parameters())
        delta = next_update(trainer, tokens, learning_rate(c, step))
        if delta is None:  # an optimizer next_update does not know: step a copy of the model and the optimizer
            delta = copied_update(trainer, tokens, learning_rate(c, step))
        delta = {f"model.{k}": delta[k] if delta.get(k) is not None else torch.zeros_like(p) for k, p in params.items()}
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


def _sharing_parameters(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose modules, buffers and other state (a head's sampling generator) are its own and whose
    parameters are the model's: running it leaves the model as it was, without a copy of its weights."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def diagnostic_gradients(trainer: Trainer, tokens: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """The gradients of the loss on the first ``diag_tokens`` predictable positions of ``tokens`` in each parameter
    (None where the loss does not depend on it), clipped as a training step clips them; nothing is written to the
    parameters' ``.grad``."""
    c = trainer.config
    model = _sharing_parameters(trainer.model)
    names, params = zip(*model.named_parameters())
    h, y = trainer.split(tokens, model.hidden)  # every position of the diag_rows sequences: keep diag_tokens, as G
    with trainer.autocast():
        loss = model.head.loss(h[:c.diag_tokens], y[:c.diag_tokens])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    present = [gr for gr in grads if gr is not None]
    if c.grad_clip > 0 and present:  # as torch.nn.utils.clip_grad_norm_
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in present]))
        coef = torch.clamp(c.grad_clip / (total + 1e-6), max=1.0)
        grads = [None if gr is None else gr * coef for gr in grads]
    return dict(zip(names, grads))


@torch.no_grad()
def _adamw_update(optimizer: torch.optim.AdamW, p: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    group, state = optimizer.param_groups[0], optimizer.state.get(p, {})
    (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
    t = float(state["step"]) + 1 if "step" in state else 1.0
    m = state["exp_avg"].lerp(g, 1 - b1) if "exp_avg" in state else g * (1 - b1)
    v = state["exp_avg_sq"] * b2 + g * g * (1 - b2) if "exp_avg_sq" in state else g * g * (1 - b2)
    denom = v.sqrt() / math.sqrt(1 - b2**t) + eps
    return m / denom * (-lr / (1 - b1**t)) - p.detach() * (lr * wd)  # p (1 - lr wd) - step_size m / denom - p


@torch.no_grad()
def _sgd_update(optimizer: torch.optim.SGD, p: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    group, state = optimizer.param_groups[0], optimizer.state.get(p, {})
    d = g + p.detach() * group["weight_decay"] if group["weight_decay"] else g
    if group["momentum"]:
        buf = state.get("momentum_buffer")
        d = d if buf is None else buf * group["momentum"] + d * (1 - group["dampening"])
    return d * -lr


def next_update(trainer: Trainer, tokens: torch.Tensor, lr: float) -> dict[str, torch.Tensor | None] | None:
    """Δθ by parameter name: what ``trainer.optimizer.step()`` at ``lr`` would add to each parameter after a training
    step's backward (and clipping) on the diagnostic positions of ``tokens``, from its state (AdamW's moments and
    step count, SGD's momentum buffer) without changing it or the model. None for an optimizer or option it does not
    know (amsgrad, maximize, nesterov, several parameter groups)."""
    optimizer = trainer.optimizer
    group = optimizer.param_groups[0]
    if len(optimizer.param_groups) != 1 or group.get("maximize") or group.get("differentiable"):
        return None
    if isinstance(optimizer, torch.optim.AdamW) and not group["amsgrad"]:
        update = _adamw_update
    elif type(optimizer) is torch.optim.SGD and not group["nesterov"]:
        update = _sgd_update
    else:
        return None
    params = dict(trainer.model.named_parameters())
    return {k: None if g is None else update(optimizer, params[k], g, lr)
            for k, g in diagnostic_gradients(trainer, tokens).items()}


def copied_update(trainer: Trainer, tokens: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
    """Δθ by parameter name as :func:`next_update` says, measured instead: one step of a deep copy of the model and
    the optimizer state (any optimizer; a copy of the weights and the state, so a bounded but larger cost)."""
    c = trainer.config
    model = copy.deepcopy(trainer.model)
    optimizer = make_optimizer(c, model.parameters(), trainer.device)
    optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))  # deep: loading may alias tensors
    h, y = trainer.split(tokens, model.hidden)
    trainer.optimize(model, optimizer, h[:c.diag_tokens], y[:c.diag_tokens], lr)
    params = dict(trainer.model.named_parameters())
    return {k: p.detach() - params[k].detach() for k, p in model.named_parameters()}
