"""Supervision complexity on known kernels, and the empirical NTK Gram against finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.diagnostics.complexity import (
    NTKGram,
    adjusted_supervision_complexity,
    ntk_gram,
    supervision_complexity,
)


def one_hot(n: int, k: int, seed: int = 0) -> torch.Tensor:
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    return nn.functional.one_hot(labels, k).double()


def random_psd(n: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(n, 2 * n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / (2 * n)


@pytest.mark.parametrize("c", [1e-3, 1.0, 37.0])
def test_scaled_identity_and_one_hot_labels_give_asc_one(c: float) -> None:
    y = one_hot(20, 5)
    kernel = c * torch.eye(20, dtype=torch.float64)
    assert adjusted_supervision_complexity(kernel, y, ridge=0.0) == pytest.approx(1.0, abs=1e-12)
    assert adjusted_supervision_complexity(kernel, y) == pytest.approx(1.0, abs=1e-5)  # default ridge
    assert supervision_complexity(kernel, y, ridge=0.0) == pytest.approx(20 / c, rel=1e-12)


def test_asc_is_invariant_to_kernel_scale_and_sc_is_quadratic_in_targets() -> None:
    kernel, y = random_psd(16), one_hot(16, 4, seed=3)
    base = adjusted_supervision_complexity(kernel, y)
    for c in (1e-4, 0.5, 9.0, 1e5):
        assert adjusted_supervision_complexity(c * kernel, y) == pytest.approx(base, rel=1e-9)
    sc = supervision_complexity(kernel, y)
    for a in (0.1, 3.0, -2.0):
        assert supervision_complexity(kernel, a * y) == pytest.approx(a * a * sc, rel=1e-9)


def test_sc_on_a_diagonal_kernel_is_the_weighted_sum_of_squares() -> None:
    d = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0], [1.0, -1.0]], dtype=torch.float64)
    expected = float(((y**2).sum(1) / d).sum())  # 1 + 0.25 + 1 + 4
    assert supervision_complexity(torch.diag(d), y, ridge=0.0) == pytest.approx(expected, rel=1e-12)
    asc = adjusted_supervision_complexity(torch.diag(d), y, ridge=0.0)
    assert asc == pytest.approx(math.sqrt(expected * 7.5) / 4, rel=1e-12)


def test_every_kernel_layout_gives_asc_one_for_scaled_identity() -> None:
    n, k, c = 12, 3, 2.5
    y = one_hot(n, k, seed=1)
    eye = torch.eye(n, dtype=torch.float64)
    grams = [
        NTKGram("per_logit", c * torch.stack([eye] * k), n, k),
        NTKGram("trace", c * eye, n, k),
        NTKGram("full", c * torch.eye(n * k, dtype=torch.float64), n, k),
    ]
    for gram in grams:
        assert gram.asc(y, ridge=0.0) == pytest.approx(1.0, abs=1e-12), gram.kind


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def finite_difference_jacobian(model: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(n, k, P) Jacobian of the logits by central differences, one parameter entry at a time."""
    columns = []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = float(flat[i])
                flat[i] = old + eps
                plus = model(x)
                flat[i] = old - eps
                minus = model(x)
                flat[i] = old
                columns.append((plus - minus) / (2 * eps))
    return torch.stack(columns, dim=-1)


def test_ntk_gram_matches_finite_differences_on_a_tiny_mlp() -> None:
    torch.manual_seed(0)
    model = TinyMLP().double()
    x = torch.randn(7, 4, dtype=torch.float64)
    jac = finite_difference_jacobian(model, x)  # (n, k, P)
    n, k, _ = jac.shape
    per_logit = torch.stack([jac[:, c] @ jac[:, c].T for c in range(k)])
    expected = {
        "full": jac.reshape(n * k, -1) @ jac.reshape(n * k, -1).T,
        "per_logit": per_logit,
        "trace": per_logit.mean(0),
        "sum": jac.sum(1) @ jac.sum(1).T,
    }
    for kind, want in expected.items():
        gram = ntk_gram(model, x, kind, chunk_size=3)
        assert gram.matrix.shape == want.shape, kind
        torch.testing.assert_close(gram.matrix, want, rtol=1e-6, atol=1e-8, msg=kind)


def assert_symmetric_psd(matrix: torch.Tensor) -> None:
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=1e-9 * float(matrix.abs().max()))
    eigenvalues = torch.linalg.eigvalsh(matrix)
    assert float(eigenvalues.min()) >= -1e-8 * float(eigenvalues.max())


def test_ntk_gram_of_a_cifar_resnet_is_symmetric_psd_and_its_layouts_agree() -> None:
    from trainables import models

    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=4).train()
    x = torch.randn(5, 3, 32, 32)
    full = ntk_gram(model, x, "full").matrix
    assert model.training  # restored after the eval-mode kernel
    assert_symmetric_psd(full)
    blocks = full.reshape(5, 4, 5, 4)
    per_logit = ntk_gram(model, x, "per_logit").matrix
    for c in range(4):
        assert_symmetric_psd(per_logit[c])
        torch.testing.assert_close(per_logit[c], blocks[:, c, :, c], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ntk_gram(model, x, "sum").matrix, blocks.sum((1, 3)), rtol=1e-4, atol=1e-6)
