"""Worked values of the CRD (NCE), OFD (partial L2 + BN margin) and WSLD losses, from numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from trainables.methods.crd import nce_loss
from trainables.methods.ofd import bn_margin, ofd_distance
from trainables.methods.wsld import wsld_loss

S = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]])
T = np.array([[1.5, 1.0, -0.5], [0.0, 2.0, 0.4]])
Y = np.array([0, 2])


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def test_wsld_worked_value_ce_and_kl():
    tau = 4.0
    ls, pt = _log_softmax(S / tau), np.exp(_log_softmax(T / tau))
    ce_s, ce_t = -_log_softmax(S)[[0, 1], Y], -_log_softmax(T)[[0, 1], Y]
    w = 1 - np.exp(-np.maximum(ce_s / (ce_t + 1e-7), 0))
    soft_ce = -(pt * ls).sum(1)
    soft_kl = (pt * (np.log(pt) - ls)).sum(1)
    args = (torch.tensor(S), torch.tensor(T), torch.tensor(Y), tau)
    assert abs(wsld_loss(*args, "ce").item() - tau**2 * (w * soft_ce).mean()) < 1e-5
    assert abs(wsld_loss(*args, "kl").item() - tau**2 * (w * soft_kl).mean()) < 1e-5


def test_nce_worked_value_fixed_memory_and_negatives():
    """v (2 x 2 unit vectors), memory of N = 4 slots, positives at 0 and 1, negatives [[2, 3], [3, 2]], Z = 1."""
    v = np.array([[1.0, 0.0], [0.6, 0.8]])
    mem = np.array([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    idx = np.array([[0, 2, 3], [1, 3, 2]])
    scores = np.exp(np.einsum("bkd,bd->bk", mem[idx], v) / 0.07)
    k, n = 2, 4
    pn = k / n
    expected = -(np.log(scores[:, 0] / (scores[:, 0] + pn + 1e-7)).sum()
                 + np.log(pn / (scores[:, 1:] + pn + 1e-7)).sum()) / 2
    assert abs(nce_loss(torch.tensor(scores), n).item() - expected) < 1e-5 * max(1, abs(expected))


def test_ofd_margin_and_partial_l2_worked_value():
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 5.0]))
    # channel 0: Phi(0) = 0.5 > 0.001: m = -phi(0) / 0.5 = -2/sqrt(2 pi); channel 1: Phi(-10) tiny: m = -1.5
    m = [-2 / math.sqrt(2 * math.pi), -1.5]
    assert np.allclose(bn_margin(bn).flatten().numpy(), m, atol=1e-6)
    s = np.array([[[[0.5]], [[-1.0]]], [[[-2.0]], [[2.0]]]])  # B=2, C=2, 1x1
    t = np.array([[[[-1.0]], [[0.5]]], [[[-0.5]], [[-2.0]]]])
    mm = np.array(m).reshape(1, 2, 1, 1)
    loss = ((s - mm) ** 2 * ((s > mm) & (t <= mm)) + (s - t) ** 2 * ((s > t) & (t > mm) & (t <= 0))
            + (s - t) ** 2 * (t > 0))
    expected = loss.sum() / 2
    got = ofd_distance(torch.tensor(s), torch.tensor(t), torch.tensor(mm, dtype=torch.float32)).item()
    assert abs(got - expected) < 1e-5
