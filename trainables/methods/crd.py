"""``crd``: contrastive representation distillation (Tian et al., ICLR 2020) as RepDistiller runs it.

Defaults are RepDistiller's (github.com/HobbitLong/RepDistiller, ``train_student.py`` and the CRD
scripts): ``feat_dim`` 128, ``nce_k`` 16384 negatives, ``nce_t`` 0.07, memory momentum ``nce_m`` 0.5,
``beta`` 0.8 on the contrastive term, CE weight 1, KD weight 0 (``-a 0 -b 0.8``).

Both sides get an embedding head (linear + L2 normalisation) on their pooled penultimate features; both
heads train. A memory bank per side holds one unit vector per training image (indexed by ``Batch.index``,
sized by the training split, ``train_subset`` included) and is kept in the trial checkpoint as buffers.
The student's embedding is scored against the teacher's memory at the image's own slot (positive) and at
``nce_k`` random slots (negatives), ``exp(<v, m> / T) / Z``, and the teacher's embedding against the
student's memory likewise; the NCE loss of each is
``-(log(P_pos / (P_pos + K/N)) + sum_neg log((K/N) / (P_neg + K/N))) / B`` (eps 1e-7 in each ratio).
``Z`` is estimated once per side, on the first batch, as ``mean(exp(<v, m>/T)) * N`` and then fixed,
as RepDistiller does (the paper treats ``Z`` as a constant). After each step the batch's slots move to
``m * momentum + v * (1 - momentum)``, renormalised.

Differences: RepDistiller's CIFAR dataset draws the negatives from images of *other classes*; here they
are drawn uniformly from the whole split with replacement (the fallback of its memory module when no
indices are given), from a generator whose state is in the checkpoint. ``nce_k`` must be below the split
size N (a ConfigError otherwise, before training).
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

EPS = 1e-7


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss on ``scores`` (B, 1 + K): column 0 the positive, the rest negatives."""
    k = scores.shape[1] - 1
    noise = k / float(n_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + EPS))
    log_d0 = torch.log(noise / (neg + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class Embed(nn.Module):
    """Linear projection to ``feat_dim`` followed by L2 normalisation (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(torch.flatten(x, 1)), dim=1)


class ContrastMemory(nn.Module):
    """Two momentum memories (student side, teacher side) over the training split, with fixed ``Z``s."""

    def __init__(self, feat_dim: int, n_data: int, temperature: float, momentum: float) -> None:
        super().__init__()
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))
        self.n_data, self.temperature, self.momentum = n_data, temperature, momentum

    def scores(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``exp(<v, m_idx>/T)/Z`` of the student against the teacher's memory and vice versa; idx (B, 1+K)."""
        out_s = torch.exp(torch.bmm(self.memory_t[idx].detach(), v_s.unsqueeze(2)).squeeze(2) / self.temperature)
        out_t = torch.exp(torch.bmm(self.memory_s[idx].detach(), v_t.unsqueeze(2)).squeeze(2) / self.temperature)
        if bool(self.z[0] < 0):
            with torch.no_grad():
                self.z[0] = out_s.mean() * self.n_data
                self.z[1] = out_t.mean() * self.n_data
        return out_s / self.z[0], out_t / self.z[1]

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> None:
        """Move the batch's slots towards the new embeddings and renormalise."""
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            moved = memory[index] * self.momentum + v.detach().float() * (1 - self.momentum)
            memory.index_copy_(0, index, F.normalize(moved, dim=1))


@register_method
class CRD(Method):
    name, label, order = "crd", "CRD", 70
    source = "Tian et al., ICLR 2020; defaults and NCE of RepDistiller (HobbitLong/RepDistiller)"
    params = (
        Param("crd_beta", float, 0.8, ge=0, search=Float(0.1, 5.0, log=True), doc="weight of the contrastive term"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy"),
        Param("kd_weight", float, 0.0, ge=0, doc="weight of an added KD term (RepDistiller's -a; 0 there)"),
        Param("temperature", float, 4.0, gt=0, doc="KD temperature (only used when kd_weight > 0)"),
        Param("feat_dim", int, 128, ge=1, search=Choice((64, 128, 256)), doc="embedding dimension"),
        Param("nce_k", int, 16384, ge=1, search=None,
              doc="negatives per positive (must be below the training split size)"),
        Param("nce_t", float, 0.07, gt=0, search=Float(0.03, 0.3, log=True), doc="NCE temperature"),
        Param("nce_m", float, 0.5, ge=0, le=1, doc="memory momentum"),
    )

    def __init__(self, student: nn.Module, teacher: Any, cfg: Mapping[str, Any], ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        n_data = int(ctx.extras["data"].train.num_examples)
        k = int(cfg["nce_k"])
        if k >= n_data:
            raise ConfigError(f"nce_k must be below the training split's {n_data} images (negatives are drawn from "
                              f"it); got {k}")
        dim = int(cfg["feat_dim"])
        self.embed_s = Embed(student.feature_channels, dim)
        self.embed_t = Embed(teacher.feature_channels, dim)
        self.memory = ContrastMemory(dim, n_data, float(cfg["nce_t"]), float(cfg["nce_m"]))
        self.n_data, self.k = n_data, k
        self.generator = torch.Generator().manual_seed(int(cfg["seed"]) + 7919)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats)
        out = self.teacher.outputs(batch, want="features")
        v_s = self.embed_s(F.adaptive_avg_pool2d(feats, 1)).float()
        v_t = self.embed_t(F.adaptive_avg_pool2d(out.features, 1)).float()
        index = batch.index.to(v_s.device).long()
        negatives = torch.randint(self.n_data, (index.shape[0], self.k), generator=self.generator)
        idx = torch.cat([index.unsqueeze(1), negatives.to(index.device)], dim=1)
        out_s, out_t = self.memory.scores(v_s, v_t, idx)
        contrast = nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)
        self.memory.update(v_s, v_t, index)
        losses = {"ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
                  "crd": self.cfg["crd_beta"] * contrast}
        if self.cfg["kd_weight"] > 0:
            losses["kd"] = self.cfg["kd_weight"] * kd_loss(logits, out.logits, self.cfg["temperature"])
        return StepResult(logits, losses)

    def extra_state(self) -> dict[str, Any]:
        return {"crd_generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "crd_generator" in state:
            self.generator.set_state(state["crd_generator"])
