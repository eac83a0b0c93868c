"""Losses pinned to worked values computed independently from the published formulas."""

from __future__ import annotations

import math

import torch

from trainables.losses import dkd_loss, kd_loss

# shared/reference/loss_vectors.md: the CKD rows' differences serve as KD student/teacher logits.
ZS_A, ZS_B = torch.tensor([2, 0.5, -1, 0]), torch.tensor([0, 1, 0.5, -0.5])
ZT_A, ZT_B = torch.tensor([3, 0, -2, 0.5]), torch.tensor([-1, 2, 0, 0])


def test_kd_loss_matches_worked_value():
    d_s = (ZS_A - ZS_B)[None]
    d_t = (ZT_A - ZT_B)[None]
    assert abs(kd_loss(d_s, d_t, 4.0).item() - 0.908619) < 1e-5


def test_kd_loss_is_batch_mean_and_zero_at_the_teacher():
    s = torch.randn(5, 7)
    t = torch.randn(5, 7)
    per_row = torch.stack([kd_loss(s[i : i + 1], t[i : i + 1], 2.0) for i in range(5)])
    assert torch.allclose(kd_loss(s, t, 2.0), per_row.mean(), atol=1e-6)
    assert kd_loss(t, t, 3.0).abs().item() < 1e-6


def _dkd_by_hand(s: list[float], t: list[float], target: int, temp: float) -> tuple[float, float]:
    """DKD for one example, written out with plain floats from the paper's definitions."""
    ps = [math.exp(v / temp) for v in s]
    pt = [math.exp(v / temp) for v in t]
    zs, zt = sum(ps), sum(pt)
    ps, pt = [v / zs for v in ps], [v / zt for v in pt]
    bs = [ps[target], 1 - ps[target]]
    bt = [pt[target], 1 - pt[target]]
    tckd = sum(b * math.log(b / a) for a, b in zip(bs, bt)) * temp**2
    qs = [v / (1 - ps[target]) for i, v in enumerate(ps) if i != target]
    qt = [v / (1 - pt[target]) for i, v in enumerate(pt) if i != target]
    nckd = sum(b * math.log(b / a) for a, b in zip(qs, qt)) * temp**2
    return tckd, nckd


def test_dkd_matches_hand_computation():
    s = [[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 2.0, 0.0]]
    t = [[1.5, 1.0, -0.5, 0.2], [0.0, 0.0, 3.0, -2.0]]
    y = [1, 2]
    alpha, beta, temp = 1.0, 8.0, 4.0
    s64, t64 = torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    tckd, nckd = dkd_loss(s64, t64, torch.tensor(y), alpha, beta, temp)
    by_hand = [_dkd_by_hand(s[i], t[i], y[i], temp) for i in range(2)]
    assert abs(tckd.item() - alpha * sum(h[0] for h in by_hand) / 2) < 1e-5
    assert abs(nckd.item() - beta * sum(h[1] for h in by_hand) / 2) < 1e-5


def test_dkd_sums_to_kd_decomposition_at_beta_equal_one_minus_target_prob():
    """DKD's identity: KD = TCKD + (1 - p_t^target) * NCKD, per example."""
    s = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    t = torch.tensor([[1.5, 1.0, -0.5, 0.2]])
    y = torch.tensor([1])
    temp = 2.0
    pt_target = torch.softmax(t / temp, 1)[0, 1].item()
    tckd, nckd = dkd_loss(s, t, y, 1.0, 1.0 - pt_target, temp)
    assert abs((tckd + nckd).item() - kd_loss(s, t, temp).item()) < 1e-5
