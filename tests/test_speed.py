"""Speed paths: the device-resident pipeline against torchvision, precision, GPU fallback, teacher cache, bench.

Nothing here asserts on wall-clock time; ``benchmarks.throughput`` measures speed.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms

from benchmarks import cli, throughput
from trainables import models
from trainables.config import resolve_config
from trainables.data import TensorSplit, apply_crop_flip, draw_crop_flip
from trainables.device import (
    GpuFallbackWarning,
    cap_gpu_memory,
    fit_gpu_request,
    gpus_available,
    in_ray_worker,
    memory_fraction,
    ray_gpu_ids,
    resolve_device,
    use_channels_last,
    visible_index,
)
from trainables.errors import ConfigError
from trainables.loop import build_trial, evaluate, train, train_one_epoch
from trainables.teacher import FrozenTeacher, TeacherSource
from trainables.teacher.store import compute_teacher_store, load_or_compute

torch.set_num_threads(1)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _reference(mean=MEAN, std=STD) -> transforms.Compose:
    return throughput.reference_transform(mean, std, padding=4, size=32)


def _torchvision_params(seed: int) -> tuple[int, int, bool]:
    """The crop offsets and flip torchvision's RandomCrop + RandomHorizontalFlip draw after manual_seed(seed)."""
    torch.manual_seed(seed)
    i = int(torch.randint(0, 9, size=(1,)).item())
    j = int(torch.randint(0, 9, size=(1,)).item())
    flip = bool(torch.rand(1) < 0.5)
    return i, j, flip


# -- the device pipeline gives torchvision's images ----------------------------------------------------------
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_device_pipeline_equals_torchvision_for_fixed_crop_and_flip(memory_format):
    n = 48
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    reference = _reference()
    expected, params = [], []
    for k in range(n):
        params.append(_torchvision_params(k))
        torch.manual_seed(k)  # the real transform now draws exactly params[k]
        expected.append(reference(Image.fromarray(images[k].permute(1, 2, 0).numpy())))
    oy, ox, flip = (torch.tensor(v) for v in zip(*params))
    assert len({(a, b) for a, b, _ in params}) > 30 and 0 < int(flip.sum()) < n  # many crops, both flips
    split = TensorSplit(images, torch.zeros(n), MEAN, STD)
    split.memory_format = memory_format
    ours = split.normalize(apply_crop_flip(images, 4, oy, ox, flip))
    assert ours.is_contiguous(memory_format=memory_format)
    assert torch.equal(ours, torch.stack(expected))  # bit for bit, not just close


def test_split_batches_apply_the_drawn_crop_and_flip():
    n = 40
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    split = TensorSplit(images, torch.arange(n), MEAN, STD)
    batches = list(split.batches(16, shuffle=False, augment=True, generator=torch.Generator().manual_seed(5)))
    oy, ox, flip = draw_crop_flip(n, 4, torch.Generator().manual_seed(5))
    got = torch.cat([b.x for b in batches])
    assert torch.equal(got, split.normalize(apply_crop_flip(images, 4, oy, ox, flip)))
    assert all(b.augmented for b in batches)
    plain = next(iter(split.batches(n, shuffle=False, augment=False)))
    assert not plain.augmented and torch.equal(plain.x, split.normalize(images))


def _coded_image() -> np.ndarray:
    """HWC uint8 image whose red channel is row + 1 and green channel is column + 1 (0 is the padding)."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows + 1, cols + 1, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def _recover(chw_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop offsets and flips read back from augmented copies of the coded image (N, 3, 32, 32)."""
    red, green = chw_uint8[:, 0].long(), chw_uint8[:, 1].long()
    flipped = green[:, 16, 17] < green[:, 16, 16]
    i = red[:, 16, 16] - 13
    j = torch.where(flipped, green[:, 16, 16] - 12, green[:, 16, 16] - 13)
    return i.numpy(), j.numpy(), flipped.numpy()


def test_augmentation_distribution_matches_torchvision():
    n = 3000
    coded = _coded_image()
    split = TensorSplit(torch.from_numpy(coded).permute(2, 0, 1)[None].repeat(n, 1, 1, 1), torch.zeros(n),
                        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = torch.cat([b.x for b in split.batches(500, shuffle=True, augment=True,
                                              generator=torch.Generator().manual_seed(11))])
    ours = _recover((x * 255).round().to(torch.uint8))
    to_tensor = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor()])
    torch.manual_seed(12)
    pil = Image.fromarray(coded)
    ref = _recover((torch.stack([to_tensor(pil) for _ in range(n)]) * 255).round().to(torch.uint8))
    for i, j, flip in (ours, ref):
        assert set(np.unique(i)) == set(range(9)) and set(np.unique(j)) == set(range(9))
        assert stats.chisquare(np.bincount(i, minlength=9)).pvalue > 1e-3  # uniform rows offsets 0..8
        assert stats.chisquare(np.bincount(j, minlength=9)).pvalue > 1e-3  # uniform column offsets 0..8
        assert stats.chisquare(np.bincount(i * 9 + j, minlength=81)).pvalue > 1e-3  # independent
        assert stats.binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-3  # flip rate 1/2
    # and the two samples come from the same law
    for a, b in ((ours[0], ref[0]), (ours[1], ref[1])):
        table = np.stack([np.bincount(a, minlength=9), np.bincount(b, minlength=9)])
        assert stats.chi2_contingency(table).pvalue > 1e-3


# -- precision, layout, the loop's speed knobs --------------------------------------------------------------
def _teacher_file(tmp_path, arch="resnet8", classes=10):
    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pt"
    torch.save({"model": models.create(arch, num_classes=classes).state_dict()}, path)
    return str(path)


def _tiny_cfg(tmp_path, **extra):
    return {"method": "kd", "student": "resnet8", "teacher": "resnet8", "teacher_checkpoint": _teacher_file(tmp_path),
            "dataset": "digits", "train_subset": 64, "batch_size": 16, "epochs": 4, "device": "cpu",
            "augment": False, "seed": 0, **extra}


@pytest.mark.parametrize("amp, dtype", [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_fp32_and_bf16_paths_both_train(tmp_path, amp, dtype):
    # 32 images, one batch per epoch, no lr decay: the CE term must fall step after step in both precisions.
    cfg = _tiny_cfg(tmp_path, amp=amp, train_subset=32, batch_size=32, lr=0.1, kd_weight=0.1, ce_weight=1.0,
                    lr_milestones=[])
    trial = build_trial(cfg)
    assert trial.amp_dtype == (None if amp == "off" else torch.bfloat16)
    seen = {}

    def record(name):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            seen.setdefault(name, output.dtype)

        return hook

    trial.method.student.get_classifier().register_forward_hook(record("student"))
    trial.teacher.model.get_classifier().register_forward_hook(record("teacher"))
    before = [p.detach().clone() for p in trial.method.trainable_parameters()]
    losses = [train_one_epoch(trial, epoch)["train/loss_ce"] for epoch in range(6)]
    assert seen == {"student": dtype, "teacher": dtype}  # autocast really ran, student and teacher
    assert all(np.isfinite(losses)) and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in trial.method.trainable_parameters())  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, trial.method.trainable_parameters()))
    acc = evaluate(trial.method, trial.data.val, 64, trial.device, trial.amp_dtype)
    assert 0.0 <= acc["top1"] <= 100.0


def test_amp_auto_is_off_on_cpu_and_channels_last_follows_onednn():
    from trainables.device import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype({"amp": "auto"}, cpu) is None
    assert autocast_dtype({"amp": "bf16"}, cpu) == torch.bfloat16
    assert use_channels_last({"channels_last": "auto"}, cpu) == torch.backends.mkldnn.is_available()
    assert use_channels_last({"channels_last": False}, torch.device("cuda")) is False
    with pytest.raises(ConfigError, match="amp must be one of"):
        resolve_config({"amp": "fp16"})


def test_max_steps_and_channels_last_batches(tmp_path):
    trial = build_trial(_tiny_cfg(tmp_path, channels_last=True, augment=True))
    assert trial.teacher.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    metrics = train_one_epoch(trial, 0, max_steps=2)
    assert trial.teacher.calls == 2 * 16 and np.isfinite(metrics["train/loss"])
    batch = next(iter(trial.data.train.batches(16, shuffle=True, augment=True)))
    assert batch.x.is_contiguous(memory_format=torch.channels_last)


# -- device from Ray, and the GPU fallback on a machine without one -----------------------------------------
def test_gpu_request_falls_back_to_cpu_with_a_warning():
    with pytest.warns(GpuFallbackWarning, match="no GPU"):
        assert fit_gpu_request(0.25, available=0) == 0.0
    with pytest.warns(GpuFallbackWarning, match="only 1 available"):
        assert fit_gpu_request(2, available=1) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_gpu_request(0, available=0) == 0.0
        assert fit_gpu_request(0.25, available=1) == 0.25
    with pytest.raises(ConfigError, match="gpu per trial"):
        fit_gpu_request(-1, available=1)
    if not torch.cuda.is_available():
        assert gpus_available() == 0.0
        with pytest.warns(GpuFallbackWarning):
            assert fit_gpu_request(1) == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback path needs a machine without CUDA")
def test_a_trial_asking_for_cuda_trains_on_cpu_with_a_warning(tmp_path):
    with pytest.warns(GpuFallbackWarning, match="CUDA is not available"):
        assert resolve_device({"device": "cuda"}) == torch.device("cpu")
    with pytest.warns(GpuFallbackWarning):
        final = train(_tiny_cfg(tmp_path, device="cuda", epochs=1))
    assert np.isfinite(final["train/loss"]) and final["teacher_calls"] == 64
    assert cap_gpu_memory({"gpu_memory_fraction": 0.5}, torch.device("cpu")) is None


@pytest.mark.ray
def test_ray_trials_with_a_fitted_request_run_and_take_the_cpu(ray_session):
    ray = ray_session
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GpuFallbackWarning)
        gpus = fit_gpu_request(0.5)  # the cluster (2 CPUs) has no GPU: never a request that waits forever
    expected_gpus = 0.5 if gpus_available() >= 1 else 0.0
    assert gpus == expected_gpus
    assert not in_ray_worker() and ray_gpu_ids() is None  # the driver is not a trial
    ids = ray.get(ray.remote(ray_gpu_ids).options(num_cpus=1, num_gpus=gpus).remote(), timeout=120)
    device = ray.get(ray.remote(resolve_device).options(num_cpus=1, num_gpus=gpus).remote({"device": "auto"}),
                     timeout=120)
    if gpus == 0:
        assert ids == [] and device == torch.device("cpu")
    else:
        assert len(ids) == 1 and device.type == "cuda"


def test_memory_cap_derives_from_the_gpu_share():
    assert memory_fraction({}, 0.25) == pytest.approx(0.25 * 0.95)
    assert memory_fraction({"gpu_memory_fraction": 0.5}, 0.25) == 0.5
    assert memory_fraction({}, 1.0) is None and memory_fraction({}, None) is None and memory_fraction({}, 0) is None
    assert visible_index("2", "0,2,3") == 1 and visible_index("3", None) == 3 and visible_index("5", "5") == 0
    with pytest.raises(ConfigError, match="gpu_memory_fraction"):
        resolve_config({"gpu_memory_fraction": 1.5})
    with pytest.raises(ConfigError, match="device must be one of"):
        resolve_config({"device": "gpu"})


# -- teacher cache ------------------------------------------------------------------------------------------
def test_teacher_store_matches_the_teacher_and_counts_each_image_once(tmp_path):
    trial = build_trial(_tiny_cfg(tmp_path))
    teacher = TeacherSource(FrozenTeacher(trial.teacher.model))
    cache = compute_teacher_store(teacher, trial.data.train, batch_size=64)
    assert teacher.calls == len(trial.data.train) == 64 and cache.num_cached == 64
    batch = next(iter(trial.data.train.batches(16, shuffle=True, augment=False,
                                               generator=torch.Generator().manual_seed(0))))
    direct = teacher(batch.x).logits
    assert torch.allclose(cache.lookup(batch.index).logits, direct, atol=1e-5)
    teacher.store = cache
    calls = teacher.calls
    assert torch.equal(teacher.outputs(batch).logits, cache.lookup(batch.index).logits)
    assert teacher.calls == calls  # served from the cache
    augmented = next(iter(trial.data.train.batches(16, shuffle=True, augment=True)))
    teacher.outputs(augmented)
    assert teacher.calls == calls + 16  # an augmented batch is never served from the cache
    # CKD-style: one seeded augmentation per image, a subset of the images
    subset = torch.tensor([1, 5, 9])
    a = compute_teacher_store(teacher, trial.data.train, augment=True, seed=3, indices=subset)
    b = compute_teacher_store(teacher, trial.data.train, augment=True, seed=3, indices=subset)
    assert a.valid.nonzero().flatten().tolist() == [1, 5, 9] and torch.equal(a.logits, b.logits)
    assert not torch.allclose(a.logits[subset], cache.logits[subset]) and not a.serves(batch)


def test_teacher_store_in_the_loop_is_shared_through_a_folder(tmp_path):
    shared = tmp_path / "study" / "teacher_store"
    cfg = _tiny_cfg(tmp_path, epochs=2, teacher_store=True, teacher_store_dir=str(shared))
    first = train(cfg)
    files = list(shared.glob("*.pt"))
    assert len(files) == 1 and first["teacher_calls"] == 64  # one pass, then only the cache
    stamp = files[0].stat().st_mtime_ns
    second = train({**cfg, "seed": 1})  # another trial of the study: loads, does not recompute
    assert files[0].stat().st_mtime_ns == stamp and second["teacher_calls"] == 64
    uncached = train({**cfg, "teacher_store": False, "teacher_store_dir": None})
    assert uncached["teacher_calls"] == 2 * 64
    assert first["train/loss"] == pytest.approx(uncached["train/loss"], rel=1e-3)
    with pytest.raises(ConfigError, match="needs augment: false"):
        resolve_config({**cfg, "augment": True})
    with pytest.raises(ConfigError, match="not supported by method 'fitnet'"):
        resolve_config({**cfg, "method": "fitnet"})
    with pytest.raises(ConfigError, match="does not combine with teacher_budget"):
        resolve_config({**cfg, "teacher_budget": 64})


def test_load_or_compute_without_a_folder_keeps_the_cache_in_memory(tmp_path):
    trial = build_trial(_tiny_cfg(tmp_path))
    teacher = TeacherSource(FrozenTeacher(trial.teacher.model))
    cache = load_or_compute(teacher, trial.data.train, "k", None, batch_size=32)
    assert cache.key == "k" and teacher.calls == 64
    assert {p.name for p in tmp_path.iterdir()} == {"resnet8.pt"}  # nothing written


# -- the benchmark ------------------------------------------------------------------------------------------
TINY = ["--student", "resnet8", "--teacher", "resnet8", "--steps", "2", "--warmup", "1", "--batch-size", "8",
        "--classes", "10", "--workers", "1", "--threads", "1"]


@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_benchmark_smoke_prints_both_loops_and_their_ratio(capsys, order):
    assert cli.main([*TINY, "--order", order, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["order"] == order
    for loop in ("platform", "reference"):
        assert result[loop]["img_s"] > 0 and result[loop]["steps"] == 2 and result[loop]["images"] == 16
    assert result["ratio"] == pytest.approx(result["platform"]["img_s"] / result["reference"]["img_s"])
    assert result["settings"]["method"] in ("ijckd", "kd") and result["machine"]["cores"] >= 1
    text = throughput.format_text(result)
    assert "platform" in text and "reference" in text and "ratio" in text


@pytest.mark.ray
@pytest.mark.slow
def test_benchmark_pack_mode_runs_trials_through_ray(ray_session, capsys):
    assert cli.main([*TINY, "--pack", "2", "--loops", "platform", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    packed = result["platform"]["packed"]
    assert result["mode"] == "pack" and packed["trials"] == 2 and len(packed["per_trial_img_s"]) == 2
    assert packed["img_s"] > 0 and result["platform"]["single"]["img_s"] > 0
    if not result["gpu"]:
        assert packed["gpu_per_trial"] == 0 and packed["cpu_per_trial"] == 1.0  # 2 CPUs shared by 2 trials


def test_method_cost_benchmark_times_each_method_beside_the_first(capsys):
    from benchmarks import method_cost

    tiny = ["--student", "resnet8", "--teacher", "resnet8", "--steps", "2", "--batch-size", "8", "--threads", "1"]
    assert method_cost.main([*tiny, "--methods", "kd,crd,ofd", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["methods"]
    assert list(rows) == ["kd", "crd", "ofd"] and result["baseline"] == "kd"
    assert rows["kd"]["step_cost"] == 1.0 and all(r["steps"] == 2 and r["img_s"] > 0 for r in rows.values())
    assert rows["crd"]["step_cost"] == pytest.approx(rows["kd"]["img_s"] / rows["crd"]["img_s"])
    with pytest.raises(Exception, match="unknown method 'kdd'"):
        method_cost.main([*tiny, "--methods", "kd,kdd"])
