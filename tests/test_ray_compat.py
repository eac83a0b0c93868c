"""The Ray internals resume relies on are checked at start-up: present in the installed Ray, one line if not."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import ray

from study import ray_compat

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_ray_passes_the_check():
    ray_compat.check.cache_clear()
    ray_compat.check()


def _stand_in(without: str) -> types.SimpleNamespace:
    """A storage context as a future Ray might ship it: everything kdstudy reads but one attribute."""
    values = {name: f"/storage/{name}" for name in ray_compat.STORAGE_ATTRIBUTES if name != without}
    return types.SimpleNamespace(**values)


@pytest.mark.parametrize("missing", ray_compat.STORAGE_ATTRIBUTES)
def test_a_missing_attribute_fails_with_one_line(missing):
    with pytest.raises(ray_compat.RayCompatError) as info:
        ray_compat.check_storage(_stand_in(missing))
    message = str(info.value)
    assert "\n" not in message
    assert f"Ray {ray.__version__}" in message and f"'{missing}'" in message and "StorageContext" in message
    ray_compat.check_storage(_stand_in(""))  # complete: passes


def test_a_trial_without_storage_fails_loudly():
    with pytest.raises(ray_compat.RayCompatError, match=r"Trial has no attribute 'storage'"):
        ray_compat.experiment_paths(types.SimpleNamespace())


def test_requirements_admit_exactly_the_tested_ray_versions():
    line = next(ln for ln in (REPO / "requirements.txt").read_text().splitlines() if ln.startswith("ray"))
    low, high = re.search(r">=([\d.]+),<([\d.]+)", line).groups()
    tested = sorted(ray_compat.TESTED_RAY, key=lambda v: tuple(map(int, v.split("."))))
    assert low == tested[0]
    major, minor = map(int, tested[-1].split("."))
    assert high == f"{major}.{minor + 1}"
    assert any(ray.__version__.startswith(v + ".") for v in ray_compat.TESTED_RAY)
