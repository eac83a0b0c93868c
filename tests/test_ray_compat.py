"""The Ray internals resume relies on are checked at start-up: present in the installed Ray, one line if not."""

from __future__ import annotations

import re
import threading
import time
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


def _race(registry, putting: threading.Event) -> list[BaseException]:
    """Two threads register a trainable each, the second while the first is flushing (inside a slow put)."""
    from ray.tune.registry import TRAINABLE_CLASS

    errors: list[BaseException] = []

    def register(name: str) -> None:
        try:
            registry.register(TRAINABLE_CLASS, name, name)
        except RuntimeError as err:
            errors.append(err)

    putting.clear()
    first = threading.Thread(target=register, args=("kd",))
    first.start()
    assert putting.wait(5)
    second = threading.Thread(target=register, args=("dkd",))
    second.start()
    first.join()
    second.join()
    return errors


def test_stages_that_start_together_register_their_trainables_one_at_a_time(monkeypatch):
    """Unserialised, the second registration changes the dict the first is flushing; serialised, both land."""
    from ray.tune import registry as module

    stored: dict[bytes, bytes] = {}
    putting = threading.Event()

    def slow_put(key: bytes, value: bytes, overwrite: bool = True) -> None:
        putting.set()
        time.sleep(0.2)
        stored[key] = value

    monkeypatch.setattr(module, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(module, "_internal_kv_put", slow_put)
    assert any("dictionary changed size" in str(e) for e in _race(module._Registry(prefix="bare"), putting))
    guarded = module._Registry(prefix="guarded")
    ray_compat.serialise_registry(guarded)
    ray_compat.serialise_registry(guarded)  # once: a second call wraps nothing again
    stored.clear()
    assert _race(guarded, putting) == []
    assert sorted(k.rsplit(b"/", 1)[-1] for k in stored) == [b"dkd", b"kd"]
    with pytest.raises(ray_compat.RayCompatError, match="has no method 'flush_values'"):
        ray_compat.serialise_registry(types.SimpleNamespace(register=lambda *a: None))
