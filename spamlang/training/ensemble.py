"""Ensemble training: K runs that differ only in seed and learning rate, trained as one batched computation.

A training step of a small model is hundreds of tiny operator dispatches; K copies of the model stacked along a
leading member axis take one dispatch per operator for all of them. Each member keeps its own
:class:`~spamlang.training.trainer.Trainer` (initialisation from its seed, training stream, seen-mask),
:class:`~spamlang.training.evaluator.Evaluator` (held-out batches, baselines) and
:class:`~spamlang.training.probes.GradientProbe`, draws its training tokens from its own stream exactly as
``Trainer.train_step`` does, and gets its own learning-rate schedule, gradient clipping and optimizer update, so
nothing crosses members: a member that diverges stops at the step its sequential run stops at, and its NaNs never
reach the others. Evaluations load the member's parameters and optimizer state into its trainer and call
:func:`spamlang.training.loop.eval_point`; the record is built by :func:`spamlang.training.loop.run_record`. Each
record equals ``spamlang.train(config)``'s up to float rounding (see :func:`train_ensemble` for the measured
deviation) and does not depend on the other members of the group.

The batched forward is written out per backbone and per head (:data:`BACKBONES`, :data:`HEADS`): ``torch.vmap``
cannot go through the heads' custom autograd functions, and on a 1-layer transformer it was 2.3x slower than
explicit batched matmuls (its batching rules add views that autograd records). The optimizer steps are torch's own
functional AdamW and SGD, called once per member on its row of the stacked state (the same kernels, so the same
arithmetic, as the sequential run's optimizer).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

from spamlang.config import RunConfig
from spamlang.errors import SpamLangError
from spamlang.heads.gradproj import ProjectGrad, top_right_singular_vectors
from spamlang.loss import compute_dtype, default_chunk_size
from spamlang.record import EvalPoint, RunRecord, Timing
from spamlang.record.learned import LEARNED_MARGIN, bayes_gap, learned_state
from spamlang.system.threads import choose, step_flops, using
from spamlang.training import snapshot as snapshots
from spamlang.training.devices import precision, synchronize
from spamlang.training.evaluator import Evaluator
from spamlang.training.loop import eval_point, run_record
from spamlang.training.probes import GradientProbe
from spamlang.training.trainer import Trainer, learning_rate

#: the settings members of one ensemble may differ in
FREE_FIELDS = ("seed", "lr")
#: AdamW's betas and eps as ``trainer.make_optimizer`` sets them (eps: torch's default)
BETAS, EPS = (0.9, 0.95), 1e-8
#: ``clip_grad_norm_``'s guard against a zero norm
CLIP_EPS = 1e-6
#: most training sequences sampled at once per member (token blocks never cross an evaluation)
BLOCK_SEQUENCES = 2**16
#: the cost model of grouping (:func:`batchable`, :func:`max_members`; docs/performance.md#ensembles): batching pays
#: while a step is dispatch-bound. Training time per member step on one CPU thread, alone / in an ensemble of 9
#: (benchmarks/test_ensemble_perf.py::test_step_cost, a 2-core Intel Xeon shared with other jobs): 7.2x at 9.8e5
#: FLOPs/step (V = 128, T = 2), 3.5x at 3.0e7 (V = 1,024, T = 2), 1.6x at 3.1e7 (V = 128, T = 8: attention-bound),
#: 1.3x at 6.9e7 (V = 512, T = 8), 1.9x at 1.1e8 (V = 2,048, T = 2), 0.9x at 2.2e8 (V = 2,048, T = 8), 0.8-1.0x at
#: 4.2e8 (V = 4,096); a run joins an ensemble only at or below ENSEMBLE_FLOPS per step (``threads.step_flops``)
ENSEMBLE_FLOPS = 1.5e8
#: at most GROUP_FLOPS per batched step and MAX_MEMBERS members: past about 6e8 FLOPs per batched step a larger K
#: gained nothing or lost (K = 3, 9, 27: 2.2, 1.9, 1.7x at V = 2,048, T = 2; 2.4, 3.5, 3.2x at V = 1,024, T = 2), while
#: the smallest runs still gained up to K = 27 (V = 128, T = 2: 3.8, 7.2, 11.6x)
GROUP_FLOPS, MAX_MEMBERS = 6e8, 27

Params = dict[str, torch.Tensor]  # parameter name (as in LanguageModel.named_parameters) -> (K, *shape)


# -- batched building blocks: x (K, ..., in) with one weight per member ------------------------------------------------
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (K, ..., in) @ weight (K, out, in)ᵀ + bias (K, out) -> (K, ..., out)."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (K, N, in)
    out = torch.bmm(flat, weight.mT) if bias is None else torch.baddbmm(bias[:, None], flat, weight.mT)
    return out.view(*x.shape[:-1], weight.shape[1])


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``module`` applied to x (K, ..., D) with per-member weight and bias (K, D)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (K, 1, ..., 1, D)
    return torch.addcmul(bias.view(shape), F.layer_norm(x, module.normalized_shape, eps=module.eps), weight.view(shape))


def _embedding(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Rows of weight (K, V, E) at tokens (K, ...) of the same member -> (K, ..., E)."""
    k, v, e = weight.shape
    offsets = (torch.arange(k, device=tokens.device) * v).view(k, *(1,) * (tokens.dim() - 1))  # (K, 1, ...)
    return F.embedding(tokens + offsets, weight.reshape(k * v, e))


def _input(backbone: nn.Module, p: Params, tokens: torch.Tensor) -> torch.Tensor:
    """The backbone's (projected) input embedding of tokens (K, B, T) -> (K, B, T, D)."""
    x = _embedding(p["backbone.embedding.weight"], tokens)
    return _linear(x, p["backbone.proj.weight"]) if isinstance(backbone.proj, nn.Linear) else x


def _transformer(backbone: nn.Module, p: Params, tokens: torch.Tensor) -> torch.Tensor:
    """``backbones.transformer.Transformer.forward`` for K members: tokens (K, B, T) -> (K, B, T, D)."""
    k, b, t = tokens.shape
    x = _input(backbone, p, tokens) + p["backbone.positions.weight"][:, None, :t]  # (K, B, T, D)
    for i, block in enumerate(backbone.blocks):
        prefix = f"backbone.blocks.{i}."
        w = {name[len(prefix):]: v for name, v in p.items() if name.startswith(prefix)}
        h = _linear(_layer_norm(block.ln1, x, w["ln1.weight"], w["ln1.bias"]), w["qkv.weight"], w["qkv.bias"])
        q, key, v = h.flatten(0, 1).unflatten(-1, (3, block.n_heads, -1)).permute(2, 0, 3, 1, 4)  # (K B, H, T, D/H)
        # causal attention over one position is v itself, in value and gradient (flash attention's CPU kernel is
        # slow at T = 1 for a large batch)
        a = (v if t == 1 else F.scaled_dot_product_attention(q, key, v, is_causal=True)).transpose(1, 2).flatten(2)
        x = x + _linear(a.view(k, b, t, -1), w["out.weight"], w["out.bias"])
        h = _linear(_layer_norm(block.ln2, x, w["ln2.weight"], w["ln2.bias"]), w["mlp.0.weight"], w["mlp.0.bias"])
        x = x + _linear(F.gelu(h, approximate=block.mlp[1].approximate), w["mlp.2.weight"], w["mlp.2.bias"])
    return _layer_norm(backbone.ln_f, x, p["backbone.ln_f.weight"], p["backbone.ln_f.bias"])


def _gru(backbone: nn.Module, p: Params, tokens: torch.Tensor) -> torch.Tensor:
    """``backbones.gru.GRU.forward`` for K members, unrolled over time with torch's GRU cell arithmetic."""
    x = _input(backbone, p, tokens)  # (K, B, T, D)
    for layer in range(backbone.rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (p[f"backbone.rnn.{name}_l{layer}"]
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        gates_in = _linear(x, w_ih, b_ih).unbind(2)  # T x (K, B, 3D)
        h, outputs = x.new_zeros(*x.shape[:2], w_hh.shape[2]), []  # (K, B, D)
        for gi in gates_in:
            ir, iz, i_n = gi.chunk(3, -1)
            hr, hz, hn = _linear(h, w_hh, b_hh).chunk(3, -1)
            r, z = torch.sigmoid(hr + ir), torch.sigmoid(hz + iz)
            n = torch.tanh(i_n + hn * r)
            h = (h - n) * z + n
            outputs.append(h)
        x = torch.stack(outputs, 2)  # (K, B, T, D)
    return _layer_norm(backbone.ln_f, x, p["backbone.ln_f.weight"], p["backbone.ln_f.bias"])


class _BatchedLinearCrossEntropy(torch.autograd.Function):
    """``loss.linear_cross_entropy`` for K independent problems (every target valid): x (K, N, d), weight (K, V, d),
    targets (K, N) -> the K mean losses (K,), with the same chunked arithmetic, batched."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_size):
        dtype = compute_dtype(x, weight)
        k, n = targets.shape
        w = weight.to(dtype)  # (K, V, d)
        scale = 1 / n
        members = torch.arange(k, device=x.device)[:, None]  # (K, 1)
        grad_x = torch.empty(k, n, w.shape[2], dtype=dtype, device=x.device)  # (K, N, d)
        grad_w = torch.zeros_like(w)
        total = torch.zeros(k, dtype=dtype, device=x.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            xc, tc = x[:, start:stop].to(dtype), targets[:, start:stop]  # (K, c, d), (K, c)
            z = torch.bmm(xc, w.mT)  # (K, c, V) logits
            target_logit = z.gather(2, tc[..., None]).squeeze(2)  # (K, c)
            row_max = z.amax(dim=2)  # (K, c)
            z.sub_(row_max[..., None]).exp_()  # (K, c, V) unnormalised softmax
            row_sum = z.sum(dim=2)  # (K, c)
            total += ((row_max + row_sum.log() - target_logit) * scale).sum(dim=1)
            a = (scale / row_sum)[..., None]  # (K, c, 1)
            grad_x[:, start:stop] = torch.bmm(z, w).mul_(a).sub_(scale * w[members, tc])
            grad_w.baddbmm_(z.mT, xc * a)
            grad_w.index_put_((members.expand_as(tc), tc), xc * -scale, accumulate=True)
        ctx.save_for_backward(grad_x.to(x.dtype), grad_w.to(weight.dtype))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # (K,)
        grad_x, grad_w = (g.mul_(grad_output.to(g.dtype)[:, None, None]) for g in ctx.saved_tensors)
        return grad_x, grad_w, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-member mean cross-entropy (K,) of targets (K, N) under logits x (K, N, d) @ weight (K, V, d)ᵀ, in fp32 (or
    float64) chunks of about ``loss.CHUNK_ELEMENTS`` logits for all members together."""
    chunk_size = default_chunk_size(weight.shape[0] * weight.shape[1], x.device)
    with torch.autocast(x.device.type, enabled=False):
        return _BatchedLinearCrossEntropy.apply(x, weight, targets, chunk_size)


def _gradproj_loss(head: nn.Module, p: Params, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w = p["head.weight"]
    basis = torch.vmap(top_right_singular_vectors, in_dims=(0, None))(w, head.r).to(compute_dtype(h))  # (K, D, r)
    return linear_cross_entropy(ProjectGrad.apply(h, basis), w, y)


#: backbone name -> batched forward (backbone module, params, tokens (K, B, T)) -> hidden states (K, B, T, D)
BACKBONES: dict[str, Callable[[nn.Module, Params, torch.Tensor], torch.Tensor]] = {
    "transformer": _transformer, "gru": _gru}
#: head name -> batched loss (head module, params, hidden states (K, M, D), targets (K, M)) -> losses (K,)
HEADS: dict[str, Callable[[nn.Module, Params, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": lambda head, p, h, y: linear_cross_entropy(h, p["head.weight"], y),
    "tied": lambda head, p, h, y: linear_cross_entropy(h, p["backbone.embedding.weight"], y),
    "lowrank": lambda head, p, h, y: linear_cross_entropy(h @ p["head.B"].to(h.dtype).mT, p["head.A"], y),
    "gradproj": _gradproj_loss,
}


def batchable(config: RunConfig) -> bool:
    """Whether the run ``config`` may train in an ensemble (see :data:`ENSEMBLE_FLOPS`): its backbone and head have a
    batched form here, it is not compiled, it trains on the CPU (where the cost model was measured) and its step costs
    at most ENSEMBLE_FLOPS."""
    return (config.backbone in BACKBONES and config.head in HEADS and not config.compile and config.device == "cpu"
            and step_flops(config) <= ENSEMBLE_FLOPS)


def max_members(config: RunConfig) -> int:
    """The most members of an ensemble of ``config``'s runs: as many as fit in GROUP_FLOPS per batched step, at most
    MAX_MEMBERS (1: no ensemble)."""
    return max(1, min(MAX_MEMBERS, int(GROUP_FLOPS // step_flops(config)))) if batchable(config) else 1


def check_group(configs: list[RunConfig]) -> list[RunConfig]:
    """The resolved configurations of an ensemble; SpamLangError unless they agree in everything but seed and lr and
    their backbone and head have a batched form here."""
    if not configs:
        raise SpamLangError("train_ensemble needs at least one configuration")
    resolved = [c.resolve() for c in configs]
    first = resolved[0]
    for other in resolved[1:]:
        for f in dataclasses.fields(first):
            if f.name not in FREE_FIELDS and getattr(other, f.name) != getattr(first, f.name):
                raise SpamLangError(f"ensemble members may differ only in {' and '.join(FREE_FIELDS)}; these differ in "
                                    f"'{f.name}' ({getattr(first, f.name)!r} vs {getattr(other, f.name)!r})")
    for kind, name, known in (("backbone", first.backbone, BACKBONES), ("head", first.head, HEADS)):
        if name not in known:
            raise SpamLangError(f"ensemble training has no batched {kind} '{name}' (it has {', '.join(known)})")
    if first.compile:
        raise SpamLangError("ensemble training does not compile: set compile false")
    return resolved


@dataclasses.dataclass
class _Member:
    """One run of the ensemble and its bookkeeping; ``record`` is set when it stops."""

    index: int
    trainer: Trainer
    evaluator: Evaluator
    probe: GradientProbe
    #: wall time of its setup and its step-0 evaluation
    other_seconds: float
    history: list[EvalPoint] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    #: evaluations in a row at which it was learned (``stop_after`` ends its training, as ``loop._train``'s)
    learned_in_a_row: int = 0
    record: RunRecord | None = None


class _Ensemble:
    """The stacked state of the members still training: parameters and optimizer state as (K, P) matrices (one row
    per member, the parameters of ``LanguageModel.named_parameters`` flattened in order)."""

    def __init__(self, members: list[_Member]):
        self.members = members
        first = members[0].trainer
        self.config, self.device, self.mask = first.config, first.device, first.mask
        self.backbone, self.head = first.model.backbone, first.model.head
        named = list(first.model.named_parameters())
        self.names, self.shapes = [n for n, _ in named], [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.theta = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.trainer.model.parameters()])
                                  for m in members]).requires_grad_()  # (K, P)
        # AdamW: exp_avg, exp_avg_sq; SGD: the momentum buffer, if any (a zero buffer's first update is the gradient)
        moments = 2 if self.config.optimizer == "adamw" else int(self.config.momentum != 0)
        self.moments = [torch.zeros_like(self.theta) for _ in range(moments)]
        self.fused = self.device.type in ("cpu", "cuda")  # as trainer.make_optimizer
        self.steps = [torch.zeros((), device=self.device if self.fused else "cpu") for _ in members]  # AdamW's
        self.updates = 0
        self.block, self.block_start, self.block_end, self.marked = None, 0, 0, 0

    # -- data ------------------------------------------------------------------------------------------------------
    def tokens(self, step: int) -> torch.Tensor:
        """The members' training batches of ``step`` (K, B, T), sampled a block of steps at a time: row i of a
        task's sample depends only on (stream, offset + i), so these are ``Trainer.train_step``'s tokens."""
        c = self.config
        if step >= self.block_end:
            self.mark_seen(self.block_end)
            next_eval = min(c.steps, (step // c.eval_every + 1) * c.eval_every)
            n = min(next_eval - step, max(1, BLOCK_SEQUENCES // c.batch_size))
            self.block = torch.stack([
                m.trainer.task.sample(n * c.batch_size, c.seq_len, c.vocab_size, m.trainer.train_stream, self.device,
                                      offset=step * c.batch_size).view(n, c.batch_size, c.seq_len)
                for m in self.members])  # (K, n, B, T)
            self.block_start, self.block_end = step, step + n
        return self.block[:, step - self.block_start]

    def mark_seen(self, until: int, members: list[_Member] | None = None) -> None:
        """Mark the tokens of the steps before ``until`` in the members' seen-masks (the train step's bookkeeping)."""
        if self.block is not None and until > self.marked:
            steps = slice(self.marked - self.block_start, until - self.block_start)
            for m in members or self.members:
                m.trainer.seen[self.block[self.members.index(m), steps].reshape(-1)] = True
        if members is None:
            self.marked = max(self.marked, until)

    # -- training --------------------------------------------------------------------------------------------------
    def params(self) -> dict[str, torch.Tensor]:
        """Views (K, *shape) of the stacked parameters, by name."""
        k = self.theta.shape[0]
        return {name: t.view(k, *shape)
                for name, t, shape in zip(self.names, self.theta.split(self.sizes, dim=1), self.shapes)}

    def step(self, step: int) -> torch.Tensor:
        """One training step of every member; their losses (K,)."""
        c = self.config
        tokens = self.tokens(step)  # (K, B, T)
        p = self.params()
        autocast = self.members[0].trainer.autocast
        with autocast():
            h = BACKBONES[c.backbone](self.backbone, p, tokens[..., :-1])  # (K, B, T-1, D)
        h, y = h[:, :, self.mask].flatten(1, 2), tokens[..., 1:][:, :, self.mask].flatten(1)  # (K, M, D), (K, M)
        with autocast():
            losses = HEADS[c.head](self.head, p, h, y)
        self.theta.grad = None
        losses.sum().backward()
        with torch.no_grad():
            grad = self.theta.grad  # (K, P)
            if c.grad_clip > 0:  # clip_grad_norm_ per member
                grad.mul_((c.grad_clip / (grad.norm(dim=1, keepdim=True) + CLIP_EPS)).clamp(max=1.0))
            lrs = [learning_rate(m.trainer.config, step) for m in self.members]
            self.updates += 1
            (self.adamw if c.optimizer == "adamw" else self.sgd)(grad, lrs)
        return losses.detach()

    def adamw(self, grad: torch.Tensor, lrs: list[float]) -> None:
        """Each member's AdamW step, by torch's own functional AdamW (fused where make_optimizer fuses) on its row."""
        exp_avg, exp_avg_sq = self.moments
        for j, lr in enumerate(lrs):
            adamw([self.theta.data[j]], [grad[j]], [exp_avg[j]], [exp_avg_sq[j]], [], [self.steps[j]],
                  fused=self.fused or None, amsgrad=False, beta1=BETAS[0], beta2=BETAS[1], lr=lr,
                  weight_decay=self.config.weight_decay, eps=EPS, maximize=False)

    def sgd(self, grad: torch.Tensor, lrs: list[float]) -> None:
        """Each member's SGD step (momentum, L2 weight decay), by torch's own functional SGD on its row."""
        c = self.config
        for j, lr in enumerate(lrs):
            sgd([self.theta.data[j]], [grad[j]], [self.moments[0][j] if self.moments else None],
                weight_decay=c.weight_decay, momentum=c.momentum, lr=lr, dampening=0, nesterov=False, maximize=False)

    # -- members ---------------------------------------------------------------------------------------------------
    def load(self, member: _Member) -> None:
        """Put the member's parameters and optimizer state into its trainer, as its sequential run holds them."""
        j, trainer = self.members.index(member), member.trainer
        rows = [t.view(shape) for t, shape in zip(self.theta.detach()[j].split(self.sizes), self.shapes)]
        with torch.no_grad():
            for p, row in zip(trainer.model.parameters(), rows):
                p.copy_(row)
        if self.updates == 0 or not self.moments:
            return
        slices = [[t.view(shape).clone() for t, shape in zip(m[j].split(self.sizes), self.shapes)]
                  for m in self.moments]
        if self.config.optimizer == "adamw":
            state = {i: {"step": torch.tensor(float(self.updates)), "exp_avg": a, "exp_avg_sq": b}
                     for i, (a, b) in enumerate(zip(*slices))}
        else:
            state = {i: {"momentum_buffer": buf} for i, buf in enumerate(slices[0])}
        groups = trainer.optimizer.state_dict()["param_groups"]
        trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def drop(self, stopped: list[_Member]) -> None:
        """Remove stopped members from the stacked state."""
        keep = [j for j, m in enumerate(self.members) if m not in stopped]
        index = torch.tensor(keep, device=self.device)
        self.theta = self.theta.detach()[index].requires_grad_()
        self.moments = [m[index] for m in self.moments]
        self.steps = [self.steps[j] for j in keep]
        self.block = self.block[index]
        self.members = [self.members[j] for j in keep]


def train_ensemble(configs: list[RunConfig], threads: int | None = None,
                   on_eval: Callable[[int, EvalPoint], None] | None = None,
                   on_step: Callable[[int, int, int], None] | None = None, snapshot: str | Path | None = None,
                   snapshot_every: float = snapshots.SNAPSHOT_EVERY) -> list[RunRecord]:
    """Train the runs ``configs`` (equal but for seed and lr, see :func:`check_group`) as one batched computation and
    return their records, in order: each is ``spamlang.train(config)``'s up to float rounding.

    Measured against ``spamlang.train`` on CPU, float32 (the settings of tests/test_ensemble.py: V = 64, D = 16,
    T = 2 and 4, 40 steps; linear, lowrank, gradproj and tied heads, transformer and GRU, AdamW and SGD): train, val
    and test losses within 1.2e-6 relative, every other metric within 6.5e-6 (update_cosine), the same statuses at
    the same steps. The deviations come from summation order (batched matmuls, one gradient norm over all parameters)
    and grow along a trajectory, as between two machines: median final test losses were within 7e-7 on the smoke
    suite and 1.6e-5 on the cliff suite at D = 32, the worst 1.6e-3 and 4.2e-2 on runs as sensitive to rounding under
    one thread against two (1.2e-3, 3e-2; docs/performance.md#ensembles); the exploding values of a diverging member
    are chaotic (rounding amplified by lr / eps), so only its status, steps and the evaluations before are
    reproducible. On one thread a member's record is the same bits whatever the rest of its group.

    An exception in the batched computation fails the whole group: gradproj's eigh raises on a member whose weights
    overflowed (its sequential run raises too, and is recorded as failed), so a caller that gets one should train the
    members one by one with ``spamlang.train``.

    Torch runs on ``threads`` intra-op threads (default: the thread policy's choice for one member, as its sequential
    run gets, so that the group does not change it).
    ``on_eval`` is called with (member index, evaluation point), ``on_step`` with (member index, steps done,
    steps). A member's timing holds its own setup and evaluations and its share (1/members training) of each
    batched step's wall time, so ``tokens_per_second`` is its throughput within the ensemble.

    ``snapshot`` and ``snapshot_every``: as ``spamlang.train``'s, one file for the group (the stacked state, each
    member's evaluations and the records of those that stopped); a resumed group ends with the records it would have
    had uninterrupted, bit for bit on the CPU.
    """
    resolved = check_group(configs)
    on_eval, on_step = on_eval or _ignore, on_step or _ignore
    state = snapshots.load(snapshot, "ensemble", resolved) if snapshot is not None else None
    count = state.get("threads", 1) if state else choose(step_flops(resolved[0])) if threads is None else threads
    started = datetime.datetime.now(datetime.timezone.utc)
    with using(count):
        members = _members(resolved)
        with precision(members[0].trainer.device):
            ensemble = None
            if state is not None:
                try:
                    ensemble = _resumed(members, state)
                except Exception as exc:  # written by another version of the code, say: start over
                    snapshots.ignored(snapshot, exc)
                    members, state = _members(resolved), None
            _run(ensemble or _Ensemble(members), members, started, count, on_eval, on_step,
                 snapshots.Schedule(snapshot, snapshot_every, "ensemble"), state)
    return [m.record for m in members]


def _members(configs: list[RunConfig]) -> list[_Member]:
    """A fresh member per configuration, each timed from the start of its setup."""
    members = []
    for i, config in enumerate(configs):
        t0 = time.perf_counter()
        trainer = Trainer(config)
        members.append(_Member(i, trainer, Evaluator(trainer), GradientProbe(trainer), 0.0))
        members[-1].other_seconds = time.perf_counter() - t0
    return members


def _state(ensemble: _Ensemble, members: list[_Member], step: int, started: datetime.datetime, threads: int) -> dict:
    """The snapshot of an ensemble after the evaluations of ``step`` (where no token block goes on)."""
    return {"step": step, "started": started.isoformat(), "threads": threads, "updates": ensemble.updates,
            "training": [m.index for m in ensemble.members], "theta": ensemble.theta.detach(),
            "moments": ensemble.moments, "adam_steps": ensemble.steps,
            "members": [{"history": snapshots.points(m.history), "seen": m.trainer.seen,
                         "learned_in_a_row": m.learned_in_a_row, "train_seconds": m.train_seconds,
                         "eval_seconds": m.eval_seconds, "other_seconds": m.other_seconds,
                         "record": m.record.to_json() if m.record else None} for m in members]}


def _resumed(members: list[_Member], state: dict) -> _Ensemble:
    """The ensemble of a snapshot (:func:`_state`), its members' bookkeeping put back into ``members``."""
    datetime.datetime.fromisoformat(state["started"])
    for m, s in zip(members, state["members"], strict=True):
        m.history, m.learned_in_a_row = snapshots.restore_points(s["history"]), s["learned_in_a_row"]
        m.trainer.seen.copy_(s["seen"])
        m.train_seconds, m.eval_seconds, m.other_seconds = (s["train_seconds"], s["eval_seconds"],
                                                            s["other_seconds"] + m.other_seconds)
        m.record = RunRecord.from_json(s["record"], "snapshot") if s["record"] else None
    ensemble = _Ensemble([members[i] for i in state["training"]])
    if state["theta"].shape != ensemble.theta.shape or len(state["moments"]) != len(ensemble.moments):
        raise ValueError("its parameters are not the ensemble's")
    ensemble.theta = state["theta"].to(ensemble.device).requires_grad_()
    ensemble.moments = [t.to(ensemble.device) for t in state["moments"]]
    ensemble.steps = [t.to(old.device) for t, old in zip(state["adam_steps"], ensemble.steps, strict=True)]
    ensemble.updates = state["updates"]
    ensemble.block_start = ensemble.block_end = ensemble.marked = state["step"]
    return ensemble


def _ignore(*args) -> None:
    pass


def _run(ensemble: _Ensemble, members: list[_Member], started: datetime.datetime, threads: int, on_eval, on_step,
         schedule: snapshots.Schedule, state: dict | None = None) -> None:
    """``loop._train``'s loop for every member at once: the same divergence checks at the same steps, and a member
    learned at ``stop_after`` evaluations in a row stops there, as it would alone; from the step of ``state`` (a
    snapshot) when there is one."""
    c = ensemble.config
    tokens_per_step = c.batch_size * c.seq_len
    check_every = 1 if ensemble.device.type == "cpu" else 16  # as loop._train
    bayes = ensemble.members[0].trainer.task.bayes_loss(c.vocab_size, c.seq_len)  # one task and V for the group
    if state is None:
        for m in ensemble.members:
            t0 = time.perf_counter()
            m.history.append(eval_point(m.trainer, m.evaluator, m.probe, 0, 0, None,
                                        learning_rate(m.trainer.config, 0)))
            m.other_seconds += time.perf_counter() - t0
            on_eval(m.index, m.history[0])
    else:
        started = datetime.datetime.fromisoformat(state["started"])
        for m in members:
            for point in m.history:
                on_eval(m.index, point)
    first = state["step"] if state else 0
    mark = time.perf_counter()

    def charge() -> float:
        """Share the wall time since the last charge among the members training."""
        nonlocal mark
        now = time.perf_counter()
        for m in ensemble.members:
            m.train_seconds += (now - mark) / len(ensemble.members)
        mark = now
        return now

    def stop(members: list[_Member], status: str, steps_done: int) -> None:
        ensemble.mark_seen(steps_done, members)
        for m in members:
            timing = Timing(steps=steps_done, train_seconds=m.train_seconds, eval_seconds=m.eval_seconds,
                            total_seconds=m.other_seconds + m.train_seconds + m.eval_seconds)
            m.record = run_record(m.trainer, tuple(m.history), status, timing, started, threads, ensemble=True)

    for step in range(first, c.steps):
        losses = ensemble.step(step)  # (K,)
        steps_done = step + 1
        for m in ensemble.members:
            on_step(m.index, steps_done, c.steps)
        evaluate = steps_done % c.eval_every == 0 or steps_done == c.steps
        diverged, learned = [], []
        if (evaluate or steps_done % check_every == 0) and not bool(torch.isfinite(losses).all()):
            finite = torch.isfinite(losses).tolist()
            diverged = [m for m, ok in zip(ensemble.members, finite) if not ok]
        if evaluate:
            synchronize(ensemble.device)
            mark = charge()
            ensemble.mark_seen(steps_done)
            values = losses.tolist()
            for j, m in enumerate(ensemble.members):
                if m in diverged:
                    continue
                t0 = time.perf_counter()
                ensemble.load(m)
                point = eval_point(m.trainer, m.evaluator, m.probe, steps_done, steps_done * tokens_per_step,
                                   values[j], learning_rate(m.trainer.config, step))
                m.eval_seconds += time.perf_counter() - t0
                m.history.append(point)
                on_eval(m.index, point)
                if not all(math.isfinite(loss) for loss in (point.val_loss, point.test_loss)):
                    diverged.append(m)
                    continue
                evidence = learned_state(*bayes_gap(point, bayes), LEARNED_MARGIN) == "learned"
                m.learned_in_a_row = m.learned_in_a_row + 1 if evidence else 0
                if c.stop_after and m.learned_in_a_row >= c.stop_after and steps_done < c.steps:
                    learned.append(m)
            mark = time.perf_counter()
        if diverged or learned:
            mark = charge()
            stop(diverged, "diverged", steps_done)
            stop(learned, "ok", steps_done)
            if len(diverged) + len(learned) == len(ensemble.members):
                return
            ensemble.drop(diverged + learned)
        if evaluate and steps_done < c.steps and schedule.due():
            charge()
            schedule.write([m.trainer.config for m in members], _state(ensemble, members, steps_done, started, threads))
            mark = time.perf_counter()
    charge()
    stop(ensemble.members, "ok", c.steps)
