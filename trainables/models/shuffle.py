"""Channel shuffle shared by the ShuffleNet variants."""

from __future__ import annotations

from torch import Tensor


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across ``groups`` so grouped convs see every group's output next time."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
