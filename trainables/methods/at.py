"""``at``: attention transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller benchmarks it.

For each stage after the stem (RepDistiller's ``feat[1:-1]``, paired first with first), the attention map
of a ``(B, C, H, W)`` map is ``Q = mean_c |f_c|^p`` flattened to ``H*W`` and L2-normalised per example; the
loss is ``at_beta * sum_stages mean_{b,hw} (Q_s - Q_t)^2``, on top of ``ce_weight * CE`` (+ ``kd_weight`` KD).
A student map larger than the teacher's is average-pooled to the teacher's size first, a smaller one makes
the teacher's map pooled (RepDistiller's ``at_loss``).

Where RepDistiller (``distiller_zoo/AT.py``, a copy of the authors' ``at_loss``) differs from the paper's
text, this follows RepDistiller, whose numbers the comparison tables report:

- the paper sums ``|f_c|^p`` over channels, the code takes the mean (the same after normalisation, up
  to the normalisation's epsilon of 1e-12);
- the paper's term is ``beta/2 * || Q_s/||Q_s|| - Q_t/||Q_t|| ||_p`` (a norm per example); the code takes
  the *squared* difference averaged over the batch and the ``H*W`` positions, with ``beta = 1000``.
- the code raises ``f`` itself to ``p``; this takes ``|f|`` as the paper does (the same for the default ``p = 2``,
  and defined for any ``p`` on maps with negative entries such as WRN's block outputs).

Defaults: ``at_beta = 1000``, ``p = 2``, CE weight 1 and KD weight 0 (``scripts/run_cifar_distill.sh``:
``--distill attention -a 0 -b 1000``; ``-r`` defaults to 1; ``Attention(p=2)``).
"""

from __future__ import annotations

import torch

from ..data import Batch
from ..params import Float, Param
from .base import Method, StepResult, register_method
from .feature_kd import CE_KD_PARAMS, ce_kd_terms, full_precision, intermediate, match_size, stage_pairs


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """``normalize(mean_c |f|^p)`` per example: ``(B, C, H, W) -> (B, H*W)``, unit L2 norm (eps 1e-12)."""
    q = f.abs().pow(p).mean(dim=1).flatten(1)
    return torch.nn.functional.normalize(q, dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """One stage's AT term: mean over batch and positions of the squared attention-map difference (fp32)."""
    with full_precision(f_s):
        f_s, f_t = match_size(f_s.float(), f_t.float())
        return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_method
class AT(Method):
    """``ce_weight * CE + kd_weight * KD + at_beta * sum_stages AT(stage_s, stage_t)``."""

    name, label, order = "at", "AT", 35
    source = "Zagoruyko & Komodakis, ICLR 2017; RepDistiller's benchmark (beta 1000, p 2)"
    params = (
        Param("at_beta", float, 1000.0, ge=0, search=Float(100.0, 10000.0, log=True),
              doc="weight of the attention-transfer term (RepDistiller's -b)"),
        Param("at_p", float, 2.0, ge=1, doc="exponent p of the attention map mean_c abs(f)^p"),
        *CE_KD_PARAMS,
    )

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        stages = self.student.forward_stages(batch.x)
        logits = self.student.forward_head(stages[-1])
        teacher_out = self.teacher.outputs(batch, want="stages")
        g_s, g_t = intermediate(stages), intermediate(teacher_out.stages)
        transfer = sum(at_loss(g_s[i], g_t[j], self.cfg["at_p"]) for i, j in stage_pairs(g_s, g_t))
        losses = ce_kd_terms(self.cfg, logits, teacher_out.logits, batch.y)
        losses["at"] = self.cfg["at_beta"] * transfer
        return StepResult(logits, losses)
