"""``crd``: Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

``ce_weight * CE + kd_weight * KD + crd_beta * (L_nce(teacher anchor) + L_nce(student anchor))``.

Both networks' pooled penultimate features go through an embedding head (linear + L2 norm, trained;
the teacher network stays frozen). Two momentum memory banks over the whole training split (one per
side, ``N x feat_dim``, indexed by ``Batch.index``) supply ``nce_k`` negatives per example: the teacher
embedding is scored against the student bank and vice versa, ``exp(<m, v> / nce_t) / Z``, and the NCE
loss of the paper's eq. 18 (noise probability ``1/N``) is taken on each. After each step a bank row moves
to ``nce_m * row + (1 - nce_m) * v`` and is renormalised. ``Z`` (one per bank) is set once, on the first
batch, to ``mean(exp(scores / T)) * N`` and then kept fixed.

Defaults and details are those of the official code that produced the paper's numbers, RepDistiller
(github.com/HobbitLong/RepDistiller, ``crd/``, ``train_student.py``, ``scripts/run_cifar_distill.sh``):
feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5, crd_beta 0.8, CE weight 1, KD weight 0 (``-a 0 -b 0.8``;
the paper's "CRD+KD" row is ``kd_weight: 1``, KD temperature 4); banks initialised uniform in
``+-1/sqrt(feat_dim/3)``.

Differences and choices (documented in the README too):

* Negatives (``crd_negatives``). RepDistiller's training script draws them in its data set
  (``CIFAR100InstanceSample``, ``mode='exact'``): ``nce_k`` indices uniformly from the examples of *other*
  classes, without replacement unless ``nce_k`` exceeds that pool (then with replacement). That is the
  default, ``other_class``. The paper's text (and ``ContrastMemory``'s own alias sampler, unused by that
  script) draws from all examples uniformly with replacement: ``uniform``. Either way negatives come from a
  seeded generator owned by the method whose state is in the checkpoint, so a resumed trial draws the same.
* ``nce_k`` larger than the pool is allowed (sampling with replacement, as the official code does);
  on small data (digits) lower it for speed, the cost per step grows with ``nce_k``.
* The banks follow the training split, ``train_subset`` included (``N = len(train split)``), and are
  registered buffers, so the checkpoint holds them and resume is exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch
from ..errors import ConfigError
from ..losses import kd_loss
from ..params import Choice, Float, Param
from .base import Method, MethodContext, StepResult, register_method

NEGATIVES = ("other_class", "uniform")
EPS = 1e-7
"""RepDistiller's ``eps`` in the NCE loss."""
SEED_OFFSET = 7919
"""Offsets the negatives' generator from the trial seed (the loop's own streams use the seed itself)."""


class Embed(nn.Module):
    """CRD's embedding head: flatten, linear to ``dim_out``, divide by the L2 norm."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


def nce_scores(memory: torch.Tensor, idx: torch.Tensor, anchor: torch.Tensor, temperature: float) -> torch.Tensor:
    """``exp(<memory[idx[b, j]], anchor[b]> / T)``, shape ``(B, K + 1)``; the bank rows carry no gradient."""
    rows = memory.index_select(0, idx.reshape(-1)).detach().view(idx.shape[0], idx.shape[1], -1)
    return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / temperature)


def nce_loss(probs: torch.Tensor, n_data: int) -> torch.Tensor:
    """The NCE loss (CRD eq. 18) of ``probs = scores / Z``; column 0 is the positive, the rest noise.

    With ``m = K`` and noise probability ``P_n = 1 / N``: ``-(sum_b log(p_pos / (p_pos + m P_n + eps)) +
    sum_{b,j} log(m P_n / (p_neg + m P_n + eps))) / B``.
    """
    batch, m = probs.shape[0], probs.shape[1] - 1
    noise = m / float(n_data)
    pos = probs[:, 0]
    neg = probs[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + EPS))
    log_d0 = torch.log(noise / (neg + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch


def momentum_update(memory: torch.Tensor, index: torch.Tensor, v: torch.Tensor, momentum: float) -> None:
    """Bank rows ``index`` <- normalise(momentum * row + (1 - momentum) * v), in place."""
    with torch.no_grad():
        rows = memory.index_select(0, index) * momentum + v.detach().to(memory.dtype) * (1 - momentum)
        memory.index_copy_(0, index, rows / rows.pow(2).sum(1, keepdim=True).sqrt())


class NegativeSampler:
    """``nce_k`` negative indices per example, from a seeded generator (its state goes in the checkpoint).

    ``other_class``: uniform over the examples of other classes, without replacement where the pool holds
    ``nce_k`` (random keys, the ``nce_k`` smallest), with replacement otherwise (RepDistiller's data set).
    ``uniform``: uniform over all ``N`` examples with replacement (the paper's text, the alias sampler).
    """

    def __init__(self, kind: str, k: int, labels: torch.Tensor, seed: int, device: torch.device) -> None:
        self.kind, self.k, self.n = kind, int(k), int(labels.shape[0])
        self.labels = labels.to(device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed) + SEED_OFFSET)
        counts = torch.bincount(self.labels)
        self.pool = (self.n - counts).to(device)
        pools = self.pool[self.pool > 0] if self.pool.numel() else self.pool
        self.all_exact = bool((pools >= self.k).all()) if pools.numel() else False
        self.any_exact = bool((pools >= self.k).any()) if pools.numel() else False

    def draw(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, nce_k)`` indices into the training split."""
        gen, device = self.generator, self.labels.device
        if self.kind == "uniform":
            return torch.randint(0, self.n, (y.shape[0], self.k), generator=gen, device=device)
        keys = torch.rand(y.shape[0], self.n, generator=gen, device=device)
        keys = keys.masked_fill(self.labels.unsqueeze(0) == y.unsqueeze(1), 2.0)  # own class last
        if self.all_exact:
            return keys.topk(self.k, dim=1, largest=False).indices
        perm = keys.argsort(dim=1)  # a random order of each row's pool first
        pool = self.pool[y].unsqueeze(1)
        picks = (torch.rand(y.shape[0], self.k, generator=gen, device=device) * pool).long().clamp_max(pool - 1)
        replaced = perm.gather(1, picks)
        if not self.any_exact:
            return replaced
        return torch.where(pool >= self.k, perm[:, : self.k], replaced)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu() if isinstance(state, torch.Tensor) else torch.as_tensor(state))


def pooled(features: torch.Tensor) -> torch.Tensor:
    """The penultimate (pooled) feature vector of a final map, as the heads read it."""
    return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)


def training_labels(ctx: MethodContext) -> torch.Tensor:
    """The training split's labels in index order (its size is the banks' size)."""
    data = ctx.extras.get("data")
    if data is None:
        raise ConfigError("method 'crd' needs the training split (MethodContext.extras['data']) to size its memory")
    try:
        return data.train.targets().long().cpu()
    except NotImplementedError as err:
        raise ConfigError(f"method 'crd' needs the training split's labels: {err}") from None


@register_method
class CRD(Method):
    """CE (+ KD) + crd_beta * NCE of both embeddings against the other side's momentum memory bank."""

    name, label, order = "crd", "CRD", 80
    source = "Tian et al., ICLR 2020; defaults from RepDistiller (HobbitLong/RepDistiller)"
    params = (
        Param("crd_beta", float, 0.8, ge=0, search=Float(0.1, 2.0, log=True), doc="weight of the CRD (NCE) loss"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy (RepDistiller's gamma)"),
        Param("kd_weight", float, 0.0, ge=0, doc="weight of an added KD term (RepDistiller's alpha; 1 = CRD+KD)"),
        Param("temperature", float, 4.0, gt=0, doc="KD temperature, used when kd_weight > 0"),
        Param("feat_dim", int, 128, gt=0, search=Choice((64, 128, 256)), doc="embedding dimension"),
        Param("nce_k", int, 16384, gt=0, doc="negatives per example"),
        Param("nce_t", float, 0.07, gt=0, search=Float(0.03, 0.3, log=True), doc="NCE temperature"),
        Param("nce_m", float, 0.5, ge=0, le=1, doc="memory momentum (1 keeps the initial bank)"),
        Param("crd_negatives", str, "other_class", choices=NEGATIVES,
              doc="negatives from other classes (RepDistiller's script) or from all examples (the paper's text)"),
    )

    def __init__(self, student: nn.Module, teacher: Any, cfg: Mapping[str, Any], ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        labels = training_labels(ctx)
        n = int(labels.shape[0])
        if n < 2:
            raise ConfigError(f"method 'crd' needs at least 2 training examples for negatives, got {n}")
        dim = int(cfg["feat_dim"])
        self.n_data = n
        self.embed_s = Embed(int(student.feature_channels), dim)
        self.embed_t = Embed(int(teacher.feature_channels), dim)
        init = torch.Generator().manual_seed(int(cfg.get("seed") or 0) + SEED_OFFSET)
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", (torch.rand(n, dim, generator=init) * 2 - 1) * stdv)
        self.register_buffer("memory_t", (torch.rand(n, dim, generator=init) * 2 - 1) * stdv)
        self.register_buffer("z", torch.full((2,), -1.0))
        """Normalisation constants (student bank, teacher bank); negative until set on the first batch."""
        self.sampler = NegativeSampler(str(cfg["crd_negatives"]), int(cfg["nce_k"]), labels,
                                       int(cfg.get("seed") or 0), ctx.device)

    def contrast(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Both NCE losses for embeddings ``v_s``, ``v_t`` of examples ``index``; then the banks move."""
        idx = torch.cat([index.view(-1, 1), self.sampler.draw(y)], dim=1)
        t = float(self.cfg["nce_t"])
        out_t = nce_scores(self.memory_s, idx, v_t, t)  # teacher anchor against the student bank
        out_s = nce_scores(self.memory_t, idx, v_s, t)  # student anchor against the teacher bank
        with torch.no_grad():
            first = torch.stack([out_s.mean(), out_t.mean()]) * self.n_data
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        loss = nce_loss(out_s / self.z[0], self.n_data) + nce_loss(out_t / self.z[1], self.n_data)
        momentum = float(self.cfg["nce_m"])
        momentum_update(self.memory_s, index, v_s, momentum)
        momentum_update(self.memory_t, index, v_t, momentum)
        return loss

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats)
        teacher_out = self.teacher.outputs(batch, want="features")
        v_s = self.embed_s(pooled(feats))
        v_t = self.embed_t(pooled(teacher_out.features.to(feats.dtype)))
        losses = {
            "ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
            "crd": self.cfg["crd_beta"] * self.contrast(v_s, v_t, batch.index.long(), batch.y),
        }
        if self.cfg["kd_weight"] > 0:
            losses["kd"] = self.cfg["kd_weight"] * kd_loss(logits, teacher_out.logits, self.cfg["temperature"])
        return StepResult(logits, losses)

    def extra_state(self) -> dict[str, Any]:
        return {"crd_generator": self.sampler.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("crd_generator") is not None:
            self.sampler.load_state(state["crd_generator"])
