"""Time one supervision-complexity evaluation: NTK Gram of a student on n images plus four ASC values.

    python -m benchmarks.sc_cost --student resnet8 --classes 10 100 --n 256 --kinds sum per_logit

Prints one line per (classes, kind): seconds per evaluation, threads, Jacobian-row memory. Random
inputs: the cost depends on the architecture, n and k, not on the data.
"""

from __future__ import annotations

import argparse
import time

import torch

from trainables import models
from trainables.diagnostics.complexity import SC_KERNELS, gram_memory_bytes, ntk_gram


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=["sum", "per_logit"], choices=SC_KERNELS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    for k in args.classes:
        model = models.create(args.student, num_classes=k)
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(args.n, 3, 32, 32)
        y = torch.nn.functional.one_hot(torch.randint(0, k, (args.n,)), k).double()
        ntk_gram(model, x[:4], "sum")  # warm-up
        for kind in args.kinds:
            start = time.perf_counter()
            gram = ntk_gram(model, x, kind)
            values = [gram.asc(y) for _ in range(4)]
            seconds = time.perf_counter() - start
            mem = gram_memory_bytes(params, args.n, k, kind) / 2**20
            print(
                f"student={args.student} params={params} n={args.n} classes={k} kind={kind} "
                f"threads={torch.get_num_threads()} seconds={seconds:.1f} jacobian_MiB={mem:.0f} asc={values[0]:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
