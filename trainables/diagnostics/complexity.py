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

from ..teacher.network import load_teacher_model

SC_KERNELS = ("per_logit", "trace", "sum", "full")
DEFAULT_RIDGE = 1e-6
SC_TARGETS = ("labels", "random_labels", "offline_teacher", "online_teacher")
"""Metric suffixes: ``sc/<target>`` is the adjusted supervision complexity of that target."""
SC_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
"""Temperatures the final teacher's targets are also measured at (``sc/teacher_T<T>``, the paper's sweep)."""
TEMPERATURE_TARGET = "teacher_T"
TRAJECTORY_TARGET = "trajectory/"
INIT_PREFIX = "sc_init/"
"""The measurement at initialisation (before the first epoch), reported with the first epoch's metrics."""


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
        return self.sc_many({"y": targets}, ridge)["y"]

    def sc_many(self, targets: Mapping[str, Tensor], ridge: float = DEFAULT_RIDGE) -> dict[str, float]:
        """SC of several targets with one factorisation per kernel block (many targets cost one solve)."""
        names = list(targets)
        ys = [self._checked(targets[name]) for name in names]
        if not ys:
            return {}
        if self.kind == "per_logit":
            totals = torch.zeros(len(ys), dtype=torch.float64, device=self.matrix.device)
            for c in range(self.num_outputs):
                rhs = torch.stack([y[:, c] for y in ys], dim=1)
                totals += (rhs * _solve_psd(self.matrix[c], rhs, ridge)).sum(0)
        elif self.kind == "full":
            rhs = torch.stack([y.reshape(-1) for y in ys], dim=1)
            totals = (rhs * _solve_psd(self.matrix, rhs, ridge)).sum(0)
        else:
            rhs = torch.cat(ys, dim=1)
            totals = (rhs * _solve_psd(self.matrix, rhs, ridge)).sum(0).reshape(len(ys), -1).sum(1)
        return {name: float(v) for name, v in zip(names, totals)}

    def _checked(self, targets: Tensor) -> Tensor:
        y = targets.detach().to(torch.float64).to(self.matrix.device)
        if y.shape != (self.num_examples, self.num_outputs):
            raise ValueError(f"targets must be ({self.num_examples}, {self.num_outputs}), got {tuple(y.shape)}")
        return y

    def asc(self, targets: Tensor, ridge: float = DEFAULT_RIDGE) -> float:
        """Adjusted supervision complexity sqrt(SC * tr K) / n (tr K per output, see the module doc)."""
        return self.asc_many({"y": targets}, ridge)["y"]

    def asc_many(self, targets: Mapping[str, Tensor], ridge: float = DEFAULT_RIDGE) -> dict[str, float]:
        """``asc`` of each named target, the kernel factorised once."""
        trace = self.trace_per_output()
        return {name: math.sqrt(max(sc, 0.0) * trace) / self.num_examples
                for name, sc in self.sc_many(targets, ridge).items()}


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
    return {f"{prefix}{name}": value for name, value in gram.asc_many(targets, ridge).items()}


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
    def logits(self, model: nn.Module) -> Tensor:
        """model(x) on the subset in eval mode (a teacher's logits), float64, no gradients."""
        was_training = model.training
        model.eval()
        logits = model(self.x).float()
        model.train(was_training)
        return logits.to(torch.float64).clone()

    def soft_targets(self, model: nn.Module, temperature: float) -> Tensor:
        """softmax(model(x) / T) on the subset (a teacher's softened probabilities), no gradients."""
        return torch.softmax(self.logits(model) / float(temperature), dim=1)

    def metrics(
        self, student: nn.Module, teacher_targets: Mapping[str, Tensor], kind: str, ridge: float,
        prefix: str = "sc/",
    ) -> dict[str, float]:
        """``sc/labels``, ``sc/random_labels`` and ``sc/<name>`` for each teacher target, all ASC."""
        targets = {"labels": self.onehot, "random_labels": self.random_onehot, **teacher_targets}
        return complexity_metrics(student, self.x, targets, kind, ridge, prefix)


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


def temperature_name(temperature: float) -> str:
    """``teacher_T<T>``: the final teacher's softmax(z / T) (``sc/teacher_T4``)."""
    return f"{TEMPERATURE_TARGET}{float(temperature):g}"


def trajectory_name(epoch: int | None, index: int) -> str:
    """``trajectory/<teacher epoch, 4 digits>``; the checkpoint's index where its epoch is unknown."""
    return f"{TRAJECTORY_TARGET}{epoch if epoch is not None else index:04d}"


class ComplexityLog:
    """``sc/*`` before the first epoch and every ``sc_every`` epochs, on a fixed probe of ``sc_n`` training
    points, all under one student NTK Gram per measurement:

    * ``labels``, ``random_labels``; ``offline_teacher`` (final teacher at the trial's T) and
      ``online_teacher`` (the teacher in use, at T);
    * ``teacher_T<T>`` for T in ``SC_TEMPERATURES``: the final teacher's targets as a function of T;
    * with a trajectory (``online``): ``trajectory/<epoch>``, each kept checkpoint's targets at T.

    Teacher targets other than the online one are fixed, so they are computed once per trial; the Gram is
    the cost, every further target is one more right-hand side. Teacher passes here are not teacher calls.
    ``initial=True`` is the measurement at initialisation, logged as ``sc_init/*`` with the first report
    (the online teacher then is the checkpoint that supervises epoch 0).
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
        self._fixed: dict[str, Tensor] | None = None
        self._first_online: Tensor | None = None

    def due(self, epoch: int) -> bool:
        return self.every > 0 and (epoch + 1) % self.every == 0

    def _fixed_targets(self, probe: ComplexityProbe, teacher: object) -> dict[str, Tensor]:
        final = probe.logits(teacher.final_model(self.num_classes))
        targets = {"offline_teacher": torch.softmax(final / self.temperature, dim=1)}
        targets.update({temperature_name(t): torch.softmax(final / t, dim=1) for t in SC_TEMPERATURES})
        schedule = getattr(teacher, "trajectory", None)
        self._first_online = targets["offline_teacher"]
        if schedule is not None:
            device = probe.x.device
            for index, point in enumerate(schedule.points):
                model = load_teacher_model(teacher.arch, point.path, self.num_classes).to(device)
                name = trajectory_name(point.epoch, index)
                targets[name] = probe.soft_targets(model, self.temperature)
                if index == schedule.index(0):
                    self._first_online = targets[name]
        return targets

    def __call__(
        self, student: nn.Module, teacher: object, train_split: object, initial: bool = False
    ) -> dict[str, float]:
        """The metrics for ``student`` against ``teacher`` (a teacher source: ``model``, ``final_model``,
        ``trajectory``, ``arch``)."""
        if self._probe is None:
            self._probe = ComplexityProbe(train_split, self.n, self.num_classes, self.seed)
        probe = self._probe
        if self._fixed is None:
            self._fixed = self._fixed_targets(probe, teacher)
        online = self._first_online if initial else probe.soft_targets(teacher.model, self.temperature)
        targets = {**self._fixed, "online_teacher": online}
        return probe.metrics(student, targets, self.kernel, self.ridge, INIT_PREFIX if initial else "sc/")
