"""Supervision complexity (Harutyunyan et al., ICLR 2023) from the student's empirical NTK.

The empirical NTK Gram on n inputs is K = J J^T, J the Jacobian of the logits with respect to every
parameter. Supervision complexity of targets Y (n x k) is SC(Y) = tr(Y^T K^-1 Y); the adjusted form
ASC = sqrt(SC * tr K) / n does not change when K is scaled, so curves taken at different training
stages (different kernel scales) can be compared.

Multi-class outputs make the full Gram nk x nk. ``kind`` chooses how it is handled:

* ``per_logit`` (default): the block-diagonal part, one n x n kernel K_c per logit;
  SC = sum_c Y_c^T K_c^-1 Y_c. Exact when the cross-logit blocks vanish (as they do in expectation at
  initialisation). Cost: k per-example gradient passes over n inputs, memory n x #params at a time.
* ``trace``: one kernel, the mean of the per-logit blocks (the "trace NTK"); same cost as ``per_logit``.
* ``sum``: the kernel of the summed logits (cross-logit terms included); one gradient pass, the cheapest.
* ``full``: the nk x nk Gram; memory n x k x #params, only for small students and few classes.

For every kind "tr K" in ASC is the trace per output (tr of the nk x nk Gram divided by k, i.e. the
mean of tr K_c), so K = c I with one-hot Y gives ASC = 1 under every kind.

Inverses are taken with a *relative* ridge: K + ridge * (tr K / dim) * I, solved in float64. Relative,
so that ASC stays exactly scale invariant; small (default 1e-6), so it only guards against round-off
in a Gram whose smallest eigenvalues are many orders below its mean diagonal.

The kernel is the student's as used at evaluation: BatchNorm with its running statistics, so each
example's logits depend on that example alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

SC_KERNELS = ("per_logit", "trace", "sum", "full")
DEFAULT_RIDGE = 1e-6
SC_TARGETS = ("labels", "random_labels", "offline_teacher", "online_teacher")
"""Metric suffixes: ``sc/<target>`` is the adjusted supervision complexity of that target."""


@dataclass
class NTKGram:
    """An empirical NTK Gram in the layout of its ``kind``.

    ``matrix`` is (n, n) for ``trace``/``sum``, (k, n, n) for ``per_logit`` and (n*k, n*k) for ``full``
    (row index i*k + c: example i, logit c).
    """

    kind: str
    matrix: Tensor
    num_examples: int
    num_outputs: int

    def trace_per_output(self) -> float:
        if self.kind == "per_logit":
            return float(self.matrix.diagonal(dim1=1, dim2=2).sum(1).mean())
        if self.kind == "full":
            return float(self.matrix.diagonal().sum()) / self.num_outputs
        return float(self.matrix.diagonal().sum())

    def sc(self, targets: Tensor, ridge: float = DEFAULT_RIDGE) -> float:
        """Supervision complexity tr(Y^T K^-1 Y) of ``targets`` (n, k) under this kernel."""
        y = targets.detach().to(torch.float64)
        if y.shape != (self.num_examples, self.num_outputs):
            raise ValueError(f"targets must be ({self.num_examples}, {self.num_outputs}), got {tuple(y.shape)}")
        if self.kind == "per_logit":
            return sum(supervision_complexity(self.matrix[c], y[:, c : c + 1], ridge) for c in range(self.num_outputs))
        if self.kind == "full":
            return supervision_complexity(self.matrix, y.reshape(-1, 1), ridge)
        return supervision_complexity(self.matrix, y, ridge)

    def asc(self, targets: Tensor, ridge: float = DEFAULT_RIDGE) -> float:
        """Adjusted supervision complexity sqrt(SC * tr K) / n (tr K per output, see the module doc)."""
        return math.sqrt(max(self.sc(targets, ridge), 0.0) * self.trace_per_output()) / self.num_examples


def _solve_psd(kernel: Tensor, rhs: Tensor, ridge: float) -> Tensor:
    k = kernel.to(torch.float64)
    k = 0.5 * (k + k.T)
    dim = k.shape[0]
    if ridge > 0:
        k = k + (ridge * float(k.diagonal().sum()) / dim) * torch.eye(dim, dtype=k.dtype, device=k.device)
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(k, rhs).solution


def supervision_complexity(kernel: Tensor, targets: Tensor, ridge: float = DEFAULT_RIDGE) -> float:
    """SC(Y) = tr(Y^T (K + ridge * tr(K)/n * I)^-1 Y) for an (n, n) kernel and (n, k) or (n,) targets."""
    y = targets.detach().to(torch.float64).to(kernel.device)
    if y.ndim == 1:
        y = y[:, None]
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] != y.shape[0]:
        raise ValueError(f"kernel {tuple(kernel.shape)} does not fit targets {tuple(y.shape)}")
    return float((y * _solve_psd(kernel, y, ridge)).sum())


def adjusted_supervision_complexity(kernel: Tensor, targets: Tensor, ridge: float = DEFAULT_RIDGE) -> float:
    """ASC = sqrt(SC(Y) * tr K) / n for an (n, n) kernel: invariant to scaling K."""
    sc = supervision_complexity(kernel, targets, ridge)
    return math.sqrt(max(sc, 0.0) * float(kernel.diagonal().sum())) / kernel.shape[0]


def _functional(model: nn.Module) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor], Tensor], Tensor]]:
    """Parameters (detached) and f(params, x_single) -> logits (k,) for one example."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def logits(p: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, ({**p}, buffers), (x.unsqueeze(0),)).squeeze(0)

    return params, logits


def _flatten(per_param: Mapping[str, Tensor], lead: int) -> Tensor:
    """Concatenate per-parameter gradients into (lead..., #params)."""
    return torch.cat([g.reshape(*g.shape[:lead], -1) for g in per_param.values()], dim=-1)


def _gram(rows: Tensor, chunk: int = 1 << 16) -> Tensor:
    """rows @ rows.T accumulated in float64 over column chunks (precision for small eigenvalues)."""
    n = rows.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[1], chunk):
        block = rows[:, start : start + chunk].to(torch.float64)
        out += block @ block.T
    return out


def gram_memory_bytes(num_params: int, n: int, k: int, kind: str) -> int:
    """Peak bytes the Jacobian rows take: n x #params (x k for ``full``) in float32."""
    return 4 * num_params * n * (k if kind == "full" else 1)


def ntk_gram(model: nn.Module, inputs: Tensor, kind: str = "per_logit", chunk_size: int = 64) -> NTKGram:
    """The empirical NTK Gram of ``model`` on ``inputs`` (n, ...) via ``torch.func``, in eval mode."""
    if kind not in SC_KERNELS:
        raise ValueError(f"sc kernel must be one of {', '.join(SC_KERNELS)}; got '{kind}'")
    was_training = model.training
    model.eval()
    try:
        params, f = _functional(model)
        with torch.no_grad():
            k = int(f(params, inputs[0]).shape[0])
        n = int(inputs.shape[0])
        chunks = list(inputs.split(chunk_size))
        if kind == "full":
            jac = vmap(jacrev(f), in_dims=(None, 0))
            rows = torch.cat([_flatten(jac(params, c), 2).reshape(-1, _count(params)) for c in chunks])
            return NTKGram(kind, _gram(rows), n, k)
        if kind == "sum":
            g = vmap(grad(lambda p, x: f(p, x).sum()), in_dims=(None, 0))
            rows = torch.cat([_flatten(g(params, c), 1) for c in chunks])
            return NTKGram(kind, _gram(rows), n, k)
        blocks = []
        for c_out in range(k):
            g = vmap(grad(lambda p, x, c=c_out: f(p, x)[c]), in_dims=(None, 0))
            rows = torch.cat([_flatten(g(params, c), 1) for c in chunks])
            blocks.append(_gram(rows))
            del rows
        stacked = torch.stack(blocks)
        if kind == "trace":
            return NTKGram(kind, stacked.mean(0), n, k)
        return NTKGram(kind, stacked, n, k)
    finally:
        model.train(was_training)


def _count(params: Mapping[str, Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def complexity_metrics(
    model: nn.Module,
    inputs: Tensor,
    targets: Mapping[str, Tensor],
    kind: str = "per_logit",
    ridge: float = DEFAULT_RIDGE,
    prefix: str = "sc/",
) -> dict[str, float]:
    """ASC of each named target (n, k) under one NTK Gram of ``model`` on ``inputs``."""
    gram = ntk_gram(model, inputs, kind)
    return {f"{prefix}{name}": gram.asc(y, ridge) for name, y in targets.items()}


def gather_examples(split: object, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Un-augmented, normalised images and labels of ``indices`` of a split (tensor- or loader-backed)."""
    if hasattr(split, "subset"):
        sub = split.subset(indices)
        batch = next(sub.batches(len(indices), shuffle=False, augment=False))
        return batch.x, batch.y
    dataset = split.eval_dataset  # LoaderSplit: (image, label, index) per item
    items = [dataset[int(i)] for i in indices]
    x = torch.stack([item[0] for item in items]).to(split.device)
    y = torch.tensor([int(item[1]) for item in items], device=split.device)
    return x, y


class ComplexityProbe:
    """The fixed, seeded subset of training points supervision complexity is measured on in a trial.

    Holds the images, the one-hot labels and one-hot *shuffled* labels (a seeded permutation of the
    subset's labels, so the class frequencies match). The same ``seed`` gives the same subset and
    permutation in every trial and after every resume.
    """

    def __init__(self, split: object, n: int, num_classes: int, seed: int) -> None:
        total = len(split)  # type: ignore[arg-type]
        if not 1 < n <= total:
            raise ValueError(f"sc_n must be in [2, {total}] (the training split's size), got {n}")
        gen = torch.Generator().manual_seed(int(seed) * 7919 + 104729)
        indices = torch.randperm(total, generator=gen)[:n].sort().values
        self.indices = indices
        self.x, y = gather_examples(split, indices)
        self.labels = y
        self.num_classes = num_classes
        perm = torch.randperm(n, generator=gen).to(y.device)
        self.onehot = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)
        self.random_onehot = torch.nn.functional.one_hot(y[perm], num_classes).to(torch.float64)

    @torch.inference_mode()
    def soft_targets(self, model: nn.Module, temperature: float) -> Tensor:
        """softmax(model(x) / T) on the subset (a teacher's softened probabilities), no gradients."""
        was_training = model.training
        model.eval()
        logits = model(self.x).float()
        model.train(was_training)
        return torch.softmax(logits / float(temperature), dim=1).to(torch.float64).clone()

    def metrics(
        self, student: nn.Module, teacher_targets: Mapping[str, Tensor], kind: str, ridge: float
    ) -> dict[str, float]:
        """``sc/labels``, ``sc/random_labels`` and ``sc/<name>`` for each teacher target, all ASC."""
        targets = {"labels": self.onehot, "random_labels": self.random_onehot, **teacher_targets}
        return complexity_metrics(student, self.x, targets, kind, ridge)


MAX_SC_JACOBIAN_BYTES = 4 << 30
"""Refuse SC settings whose Jacobian rows would need more than this (lower sc_n or use sc_kernel: sum)."""


def check_sc_settings(cfg: Mapping[str, object], student: nn.Module, train_size: int, num_classes: int) -> None:
    """With ``sc_every > 0``: ``sc_n`` fits the training split and its Jacobian rows fit in memory.

    Raises ``ConfigError`` when the trial is built, before any epoch.
    """
    from ..errors import ConfigError

    if int(cfg.get("sc_every") or 0) <= 0:
        return
    if int(cfg["sc_n"]) > train_size:
        raise ConfigError(f"sc_n must be <= {train_size} (the training split's size), got {cfg['sc_n']}")
    params = sum(p.numel() for p in student.parameters())
    need = gram_memory_bytes(params, int(cfg["sc_n"]), num_classes, str(cfg["sc_kernel"]))
    if need > MAX_SC_JACOBIAN_BYTES:
        raise ConfigError(
            f"sc_n {cfg['sc_n']} with sc_kernel '{cfg['sc_kernel']}' needs ~{need / 2**30:.1f} GiB "
            f"of Jacobian rows for this student (limit {MAX_SC_JACOBIAN_BYTES / 2**30:.0f} GiB); "
            "lower sc_n or use sc_kernel per_logit/sum"
        )


class ComplexityLog:
    """``sc/*`` every ``sc_every`` epochs: ASC of labels, shuffled labels, the final (offline) teacher's and
    the teacher in use's (online) softened targets, on a fixed probe of ``sc_n`` training points.

    The final teacher's targets are computed once; teacher passes here are diagnostics, not teacher calls.
    """

    def __init__(self, cfg: Mapping[str, object], num_classes: int) -> None:
        self.every = int(cfg.get("sc_every") or 0)
        self.n = int(cfg.get("sc_n") or 0)
        self.kernel = str(cfg.get("sc_kernel", "per_logit"))
        self.ridge = float(cfg.get("sc_ridge", DEFAULT_RIDGE))
        self.temperature = float(cfg.get("temperature", 1.0))
        self.seed = int(cfg.get("split_seed") or 0)
        self.num_classes = num_classes
        self._probe: ComplexityProbe | None = None
        self._offline_targets: Tensor | None = None

    def due(self, epoch: int) -> bool:
        return self.every > 0 and (epoch + 1) % self.every == 0

    def __call__(self, student: nn.Module, teacher: object, train_split: object) -> dict[str, float]:
        """The metrics for ``student`` against ``teacher`` (a teacher source: ``model``, ``final_model``)."""
        if self._probe is None:
            self._probe = ComplexityProbe(train_split, self.n, self.num_classes, self.seed)
        probe = self._probe
        if self._offline_targets is None:
            self._offline_targets = probe.soft_targets(teacher.final_model(self.num_classes), self.temperature)
        targets = {
            "offline_teacher": self._offline_targets,
            "online_teacher": probe.soft_targets(teacher.model, self.temperature),
        }
        return probe.metrics(student, targets, self.kernel, self.ridge)
