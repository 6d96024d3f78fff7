"""Multi-process training: the rank helpers, and real ``torchrun`` launches of both trainers on CPU (Gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from covidcxr.config import CONFIGS_DIR
from covidcxr.engine.common import distributed
from covidcxr.models import load_weights


@pytest.fixture()
def single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_shards_are_disjoint_and_cover_every_index():
    indices = list(range(10, 33))
    shards = [distributed.shard(indices, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == indices
    assert {len(s) for s in shards} == {7, 8}


def test_weighted_shards_split_one_shared_draw():
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    draw = list(WeightedRandomSampler(weights, 12, replacement=True, generator=torch.Generator().manual_seed(7)))
    shards = [distributed.weighted_shard(weights, 4, seed=7, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    # positions r, r+3, r+6... of the same draw: together exactly the draw, each position once
    assert [shards[i % 3][i // 3] for i in range(12)] == draw


def test_one_process_draws_what_the_single_process_sampler_draws(single_process):
    weights = np.random.default_rng(0).random(50)
    expected = list(WeightedRandomSampler(weights, 32, replacement=True, generator=torch.Generator().manual_seed(3)))
    assert distributed.weighted_shard(weights, 32, seed=3) == expected


def test_helpers_are_no_ops_without_torchrun(single_process):
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert distributed.is_main() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.all_reduce_sum([1.5, 3], torch.device("cpu")) == [1.5, 3]
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    distributed.check_same(4, "epoch")
    distributed.barrier()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model and distributed.unwrap(model) is model
    distributed.cleanup()


def test_is_main_reads_the_launch_rank_outside_a_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.is_main()
    assert distributed.launch_env() == distributed.LaunchEnv(rank=1, world_size=2, local_rank=0)


# ---------------------------------------------------------------------------
# Real launches: two CPU processes, Gloo


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


CNN = str(CONFIGS_DIR / "diagnosis_cnn.yaml")  # the CNN recipe (DDP trains CNNs)


def _train(task: str, out, data_root, overrides: list[str], resume: bool = False, config: str | None = None) -> str:
    sets = [a for kv in overrides for a in ("--set", kv)] + (["--resume"] if resume else [])
    sets += ["--config", config] if config else []
    # The CNN (a research design) trains through python -m covidcxr.research, on the same DDP plumbing.
    command = ["-m", "covidcxr.research", "train-cnn"] if config == CNN else ["-m", "covidcxr.cli", "-v", "train", task]
    proc = _torchrun([*command, "--data-root", str(data_root), "--out", str(out), *sets])
    return proc.stdout + proc.stderr


def _assert_one_set_of_outputs(run, export_name: str, log: str, extra: set[str]) -> None:
    # The test-split evaluation a training run ends with writes into eval/ (rank 0 alone; checked elsewhere).
    files = {
        p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and p.relative_to(run).parts[0] != "eval"
    }
    expected = {
        "config.yaml",
        "checkpoint.pt",
        "metrics.json",
        "learning_curve.png",
        f"export/{export_name}.pt",
        f"export/{export_name}.json",
    }
    assert files == expected | extra, files
    assert log.count(f"exported {run}") == 1, "more than one rank exported"
    model, spec = load_weights(run / "export" / f"{export_name}.json")  # verifies the sha256
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"]), "checkpoint holds the DDP wrapper's names"
    model.load_state_dict(ckpt["model"])  # a single process can resume/export it
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["train_loss"])


@pytest.mark.slow
def test_torchrun_two_processes_train_segmentation(tmp_path, data_root):
    run = tmp_path / "seg"
    log = _train(
        "segmentation",
        run,
        data_root,
        ["limit=8", "epochs=1", "input_size=64", "batch_size=2", "amp=none", "device=cpu"],
    )
    _assert_one_set_of_outputs(run, "unet_mobilenetv2_lungs", log, {"val_overlays.png"})
    assert "rank 1 of 2 (gloo)" in log
    # every rank loads the checkpoint; the finished run trains nothing and exports the same best weights
    sha = json.loads((run / "export" / "unet_mobilenetv2_lungs.json").read_text())["sha256"]
    log = _train("segmentation", run, data_root, [], resume=True)
    _assert_one_set_of_outputs(run, "unet_mobilenetv2_lungs", log, {"val_overlays.png"})
    assert json.loads((run / "export" / "unet_mobilenetv2_lungs.json").read_text())["sha256"] == sha


@pytest.mark.slow
def test_torchrun_two_processes_train_diagnosis(tmp_path, data_root):
    # input_size 224 (the default) reuses the view cache a development machine already holds
    run = tmp_path / "diag"
    log = _train(
        "diagnosis", run, data_root, ["limit=8", "epochs=1", "batch_size=2", "amp=none", "device=cpu"], config=CNN
    )
    _assert_one_set_of_outputs(run, "mobilenet_v2_diagnosis", log, set())
    spec = json.loads((run / "export" / "mobilenet_v2_diagnosis.json").read_text())
    assert 0.05 <= spec["temperature"] <= 20


_COLLECTIVES = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from covidcxr.engine.common import distributed

    device = distributed.init(torch.device("cpu"))
    r = distributed.rank()
    assert distributed.world_size() == 2 and distributed.is_main() == (r == 0)
    assert distributed.all_reduce_sum([r + 1.0, 2], device) == [3.0, 4.0]
    assert distributed.broadcast({"rank": r}) == {"rank": 0}
    distributed.check_same(7, "resume epoch")
    try:
        distributed.check_same(r, "resume epoch")
    except RuntimeError as err:
        assert r == 1 and "shared filesystem" in str(err)
    else:
        assert r == 0
    marker = Path(sys.argv[1])
    with distributed.main_first():  # rank 0 runs the block before rank 1 enters it
        if r == 0:
            marker.write_text("filled")
        assert marker.read_text() == "filled"
    distributed.cleanup()
    assert distributed.is_main() == (r == 0)
    print(f"ok {r}")
    """
)


@pytest.mark.slow
def test_collectives_under_torchrun(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(_COLLECTIVES)
    proc = _torchrun([str(script), str(tmp_path / "cache")], timeout=120)
    assert "ok 0" in proc.stdout and "ok 1" in proc.stdout
