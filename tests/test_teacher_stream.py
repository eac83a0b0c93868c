"""The teacher stream: trials that read it train bit-identically; files are atomic and reused; a trial that
finds a chunk busy computes later chunks ahead, waits, then works around a writer that never finishes; the
size limit evicts the oldest epochs, never one being written.

Real torch on the embedded digits (augmentation on, as in every paper recipe) with a small seeded teacher
file: exactness and accounting do not depend on what the teacher learned.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import StopAfter
from trainables import models
from trainables.checkpoint import load_state
from trainables.loop import train
from trainables.reporting import RunDirReporter
from trainables.teacher import stream as stream_module

torch.set_num_threads(1)


@pytest.fixture
def cfg(tmp_path: Path) -> dict:
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pt"
    torch.save({"model": models.create("resnet8", num_classes=10).state_dict()}, teacher_file)
    return {"method": "kd", "dataset": "digits", "teacher": "resnet8", "teacher_checkpoint": str(teacher_file),
            "student": "resnet8", "epochs": 2, "batch_size": 32, "train_subset": 96, "seed": 3,
            "bound_metrics": False, "teacher_stream_dir": str(tmp_path / "stream")}


def _run(cfg: dict, run_dir: Path, **kwargs) -> tuple[list[dict], dict]:
    reporter = RunDirReporter(run_dir)
    train(cfg, reporter=reporter, workdir=run_dir, **kwargs)
    return reporter.history, load_state(reporter.checkpoint_dir)["method"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trial_reading_the_stream_trains_bit_identically(cfg: dict, tmp_path: Path) -> None:
    live, live_weights = _run({**cfg, "teacher_stream": False}, tmp_path / "live")
    first, first_weights = _run(cfg, tmp_path / "first")  # computes the stream
    second, second_weights = _run(cfg, tmp_path / "second")  # reads it
    assert [m["teacher_calls"] for m in live] == [m["teacher_calls"] for m in second] == [96, 192]
    assert [m["teacher_calls_computed"] for m in first] == [96, 192]
    assert [m["teacher_calls_computed"] for m in second] == [0, 0]
    assert _same_weights(live_weights, first_weights) and _same_weights(live_weights, second_weights)
    assert [m["train/loss"] for m in live] == [m["train/loss"] for m in second]
    root = Path(cfg["teacher_stream_dir"])
    chunks = sorted(p.relative_to(root).parts[1:] for p in root.rglob("*.pt"))
    assert chunks == [("epoch_0000", "chunk_00000.pt"), ("epoch_0001", "chunk_00000.pt")]
    other_seed, _ = _run({**cfg, "seed": 4}, tmp_path / "other")  # other batches: a key of its own
    assert other_seed[-1]["teacher_calls_computed"] == 192


def test_bfloat16_stream_is_exact_between_writer_and_reader(cfg: dict, tmp_path: Path) -> None:
    cfg = {**cfg, "teacher_stream_dtype": "bfloat16", "epochs": 1}
    _, writer = _run(cfg, tmp_path / "writer")
    history, reader = _run(cfg, tmp_path / "reader")
    assert history[-1]["teacher_calls_computed"] == 0 and _same_weights(writer, reader)


def test_kill_resume_reuses_written_epochs_and_never_reads_a_half_written_file(cfg: dict, tmp_path: Path) -> None:
    straight, straight_weights = _run({**cfg, "teacher_stream": False}, tmp_path / "straight")
    broken = StopAfter(tmp_path / "broken", k=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=broken, workdir=tmp_path / "broken")
    epoch1 = next(Path(cfg["teacher_stream_dir"]).glob("*/epoch_0000"))
    half = epoch1.parent / "epoch_0001"
    half.mkdir()
    (half / "chunk_00000.pt.999.tmp").write_bytes(b"half a chunk")  # a writer killed mid-write
    resumed, resumed_weights = _run(cfg, tmp_path / "broken", resume_from=broken.checkpoint_dir)
    assert [m["epoch"] for m in resumed] == [2] and resumed[-1]["teacher_calls_computed"] == 192
    assert _same_weights(straight_weights, resumed_weights)
    truncated = epoch1 / "chunk_00000.pt"
    truncated.write_bytes(truncated.read_bytes()[:100])  # a chunk cut short (disk full): computed instead
    again, again_weights = _run(cfg, tmp_path / "again")
    assert [m["teacher_calls_computed"] for m in again] == [96, 96]
    assert _same_weights(straight_weights, again_weights)
    last, _ = _run(cfg, tmp_path / "last")  # the writer replaced the bad chunk
    assert last[-1]["teacher_calls_computed"] == 0


HOLD = """
import fcntl, sys, time
fh = open(sys.argv[1], "a")
fcntl.flock(fh, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


class Holder:
    """Another process holding a chunk's lock (a trial "computing" that chunk) until the block ends."""

    def __init__(self, lock: Path) -> None:
        self.lock = lock

    def __enter__(self) -> Holder:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(self.lock), "300"], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _epoch_folder(cfg: dict, epoch: int = 0) -> Path:
    return next(Path(cfg["teacher_stream_dir"]).glob(f"*/epoch_{epoch:04d}"))


def test_a_busy_writer_is_waited_for_then_worked_around(cfg: dict, tmp_path: Path, monkeypatch) -> None:
    cfg = {**cfg, "epochs": 1}
    _, reference = _run(cfg, tmp_path / "reference")
    epoch = _epoch_folder(cfg)
    for chunk in epoch.glob("chunk_*.pt"):
        chunk.unlink()
    monkeypatch.setattr(stream_module, "WAIT_S", 1.0)
    with Holder(epoch / "chunk_00000.lock"):  # another trial is "computing" the epoch's only chunk
        history, weights = _run(cfg, tmp_path / "follower")
    assert history[-1]["teacher_calls_computed"] == 96 and _same_weights(reference, weights)
    assert not list(epoch.glob("chunk_*.pt"))  # a follower that gave up does not write another's chunk


def test_a_trial_waiting_for_a_busy_chunk_computes_the_next_ones_ahead(cfg: dict, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """The look-ahead: the chunks it computes while it waits are the very logits of the loop's batches."""
    cfg = {**cfg, "epochs": 1, "train_subset": 640}  # 20 batches an epoch: chunks of 8, 8 and 4
    _, reference = _run({**cfg, "teacher_stream": False}, tmp_path / "reference")
    epoch = Path(cfg["teacher_stream_dir"]) / "key" / "epoch_0000"
    monkeypatch.setattr(stream_module, "WAIT_S", 1.0)
    monkeypatch.setattr(stream_module, "store_key", lambda **_: "key")  # the folder, known before the run
    with Holder(epoch / "chunk_00000.lock"):
        history, helper = _run(cfg, tmp_path / "helper")
    assert sorted(p.name for p in epoch.glob("chunk_*.pt")) == ["chunk_00001.pt", "chunk_00002.pt"]
    assert [p.name for p in epoch.glob("*.lock")] == ["chunk_00000.lock"]  # the holder's: the helper's are gone
    assert history[-1]["teacher_calls"] == 640 and history[-1]["teacher_calls_computed"] == 640
    assert _same_weights(reference, helper)  # it trained on chunks 1 and 2 as it had computed them ahead
    reader, read = _run(cfg, tmp_path / "reader")  # writes chunk 0 (free now), reads 1 and 2
    assert reader[-1]["teacher_calls_computed"] == 256 and _same_weights(reference, read)


DIE_AFTER_FIRST_CHUNK_OF_EPOCH_2 = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from trainables.loop import train
from trainables.reporting import RunDirReporter
from trainables.teacher import stream

write = stream.TeacherStream._write

def write_then_die(path, index, logits):
    write(path, index, logits)
    if path.parent.name == "epoch_0001":
        os.kill(os.getpid(), signal.SIGKILL)  # the writer dies mid-epoch, the chunk's lock still held

stream.TeacherStream._write = staticmethod(write_then_die)
train(json.loads(sys.argv[1]), reporter=RunDirReporter(sys.argv[2]), workdir=sys.argv[2])
"""


def test_writer_killed_mid_epoch_then_resumed_trains_like_an_uninterrupted_run(cfg: dict, tmp_path: Path) -> None:
    cfg = {**cfg, "train_subset": 320, "epochs": 3}  # 10 batches an epoch: chunks of 8 and 2
    _, straight = _run({**cfg, "teacher_stream": False}, tmp_path / "straight")
    run_dir = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", DIE_AFTER_FIRST_CHUNK_OF_EPOCH_2, json.dumps(cfg), str(run_dir)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    epoch2 = next(Path(cfg["teacher_stream_dir"]).glob("*/epoch_0001"))
    assert sorted(p.name for p in epoch2.iterdir()) == ["chunk_00000.lock", "chunk_00000.pt"]  # a stale lock
    checkpoint = RunDirReporter(run_dir).checkpoint_dir
    assert load_state(checkpoint)["epoch"] == 1
    history, resumed = _run(cfg, run_dir, resume_from=checkpoint)  # takes over the dead writer's epoch
    assert [m["epoch"] for m in history] == [2, 3]
    assert [m["teacher_calls_computed"] for m in history] == [320 + 64, 320 + 64 + 320]  # 8 batches were read
    assert _same_weights(straight, resumed)


@pytest.mark.parametrize("busy", [False, True])
def test_the_oldest_epochs_are_evicted_to_fit_the_size_limit(cfg: dict, tmp_path: Path, busy: bool) -> None:
    import os
    import time

    root = Path(cfg["teacher_stream_dir"])
    held = None
    for age, name in enumerate(["old/epoch_0000", "old/epoch_0001", "new/epoch_0000"]):
        (root / name).mkdir(parents=True)
        (root / name / "chunk_00000.pt").write_bytes(b"x" * 1000)
        if busy and age == 0:
            held = stream_module._try_lock(root / name / "chunk_00001.lock")
        stamp = time.time() - 100 + age
        os.utime(root / name, (stamp, stamp))
    limit_gb = 2500 / 2**30  # room for two of the three epochs
    s = stream_module.TeacherStream({**cfg, "augment": True, "teacher_stream_max_gb": limit_gb},
                                    torch.device("cpu"), None)
    s.begin(0, cfg["teacher_checkpoint"])
    try:  # busy: a trial is writing in the oldest epoch, so the next oldest goes
        s.logits(torch.arange(4), lambda: torch.zeros(4, 10))  # the first request makes it the chunk's writer
    finally:
        if held is not None:
            held.close()
    kept = sorted(str(p.relative_to(root)) for p in root.glob("*/epoch_*") if p.is_dir())
    survivor = "old/epoch_0000" if busy else "old/epoch_0001"
    assert kept == sorted(["new/epoch_0000", survivor, f"{s.folder.parent.name}/epoch_0000"])
    s.end()
    assert stream_module.stream_size_bytes(root) == 2000 + (s.folder / "chunk_00000.pt").stat().st_size
    assert not list(s.folder.glob("*.lock")) and not list(s.folder.glob("*.tmp"))  # written and released


TRAIN = """
import json, sys
import torch
torch.set_num_threads(1)
from trainables.checkpoint import load_state
from trainables.loop import train
from trainables.reporting import RunDirReporter
reporter = RunDirReporter(sys.argv[2])
train(json.loads(sys.argv[1]), reporter=reporter, workdir=sys.argv[2])
torch.save(load_state(reporter.checkpoint_dir)["method"], sys.argv[2] + "/weights.pt")
print(json.dumps(reporter.history[-1]["teacher_calls_computed"]))
"""


@pytest.mark.slow
def test_two_concurrent_trials_compute_each_batch_once_and_train_like_one_alone(cfg: dict, tmp_path: Path) -> None:
    cfg = {**cfg, "epochs": 1, "train_subset": 640}  # 20 batches: 3 chunks
    _, reference = _run({**cfg, "teacher_stream": False}, tmp_path / "reference")
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN, json.dumps(cfg), str(tmp_path / f"t{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    computed = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum(computed) == 640, computed  # every chunk by one of them: written, or computed ahead, once
    for i in range(2):
        assert _same_weights(reference, torch.load(tmp_path / f"t{i}" / "weights.pt", weights_only=True))


def test_no_stream_where_a_dataloader_augments_from_the_global_generator():
    """``num_workers: 0`` on a folder data set: crops depend on the process's RNG, not (seed, epoch)."""
    from trainables.data import LoaderSplit
    from trainables.teacher.source import _epochs_are_reproducible

    images = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.warns(UserWarning, match="teacher stream off: with num_workers 0"):
        assert not _epochs_are_reproducible(LoaderSplit(images, images, None, num_workers=0), {})
    assert _epochs_are_reproducible(LoaderSplit(images, images, None, num_workers=2), {})
