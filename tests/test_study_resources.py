"""Per-trial resources are sized against the nodes, not the cluster total; a trial that cannot start says why.

The sizing rules are plain arithmetic on ``Node`` records (what ``ray.nodes()`` reports); the refusal and the
pending warning run on the shared real local Ray (one node, 2 CPUs).
"""

from __future__ import annotations

import threading

import pytest
import yaml

from study.__main__ import main
from study.resources import PENDING_WARNING_ENV, Node, PendingTrialWarning, cluster_nodes, teacher_resources


def test_the_teacher_share_fits_on_the_largest_node():
    two_small = [Node("a", 1, 0), Node("b", 1, 0)]
    # the cluster has 2 CPUs, but a trial runs on one node: the teacher gets 1, never 2 (it would wait forever)
    assert teacher_resources({"cpu": 1.0, "gpu": 0.0}, two_small, teachers=1) == {"cpu": 1.0, "gpu": 0.0}
    unequal = [Node("big", 16, 0), Node("gpu", 4, 1), Node("small", 2, 0)]
    assert teacher_resources({"cpu": 1.0, "gpu": 0.0}, unequal, teachers=1)["cpu"] == 8.0  # at most 8 each
    assert teacher_resources({"cpu": 1.0, "gpu": 0.0}, unequal, teachers=4)["cpu"] == 5.0  # 22 CPUs / 4
    # with a GPU per trial only the GPU node can host it: its 4 CPUs cap the share
    assert teacher_resources({"cpu": 1.0, "gpu": 1.0}, unequal, teachers=1) == {"cpu": 4.0, "gpu": 1.0}
    # never below what the spec asks per trial
    assert teacher_resources({"cpu": 2.0, "gpu": 0.0}, two_small + [Node("c", 2, 0)], teachers=3)["cpu"] == 2.0


@pytest.mark.ray
def test_resources_no_node_can_host_are_refused_before_the_first_stage(ray_session, tmp_path, capsys):
    (node,) = cluster_nodes()
    spec = {
        "name": "too-big",
        "storage_path": str(tmp_path),
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["ce"],
        "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
        "resources": {"cpu": node.cpu + 1},
    }
    path = tmp_path / "too-big.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"ask {node.cpu + 1:g} CPU, 0 GPU per trial" in err[0]
    assert f"largest node: {node.cpu:g} CPU, 0 GPU" in err[0]
    assert not (tmp_path / "too-big").exists()  # refused before anything was written


@pytest.mark.ray
def test_a_trial_that_cannot_start_gets_one_warning_line(ray_session, tmp_path, monkeypatch, capsys):
    """Another job holds every CPU: the trial waits with nothing running, is warned about once, then runs."""
    from ray import tune

    monkeypatch.setenv(PENDING_WARNING_ENV, "1")
    cpus = int(ray_session.cluster_resources()["CPU"])

    @ray_session.remote(num_cpus=cpus)
    class Hold:
        def ready(self) -> bool:
            return True

    hold = Hold.remote()
    assert ray_session.get(hold.ready.remote())
    release = threading.Timer(8.0, ray_session.kill, [hold])  # several warning delays later
    release.start()

    def work(config):
        tune.report({"done": 1})

    tuner = tune.Tuner(tune.with_resources(work, {"cpu": 1}),
                       run_config=tune.RunConfig(name="pending", storage_path=str(tmp_path), verbose=0,
                                                 callbacks=[PendingTrialWarning("pending")]))
    try:
        results = tuner.fit()
    finally:
        release.cancel()
        release.join()
    assert not results.errors and results[0].metrics["done"] == 1  # it ran once the CPUs were free
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "has waited" in ln]
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: [pending] trial ")
    assert "asks for 1 CPU, 0 GPU" in lines[0]
    assert f"the nodes have 1 x ({cpus} CPU, 0 GPU)" in lines[0] and "free now 0 CPU" in lines[0]
