"""A real 2-process DDP train-and-prune run (torchrun, gloo backend on CPU), then a 1-process resume.

Checks that both ranks end with the identical architecture and weights (the DEMP_DEBUG_STATE_HASH_DIR
hook makes each rank write ``rank<R>.json``), that DemP removed neurons during the run, that rank 0
alone wrote a complete output directory, and that the DDP checkpoint resumes in a single process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.training import distributed as dist_util

RECIPE = Path(__file__).resolve().parents[1] / "samples" / "recipes" / "demp-mlp-digits.yaml"
OVERRIDES = ["train.epochs=2", "demp.interval=10", "demp.peak=0.01", "export.latency=false"]


def _env(hash_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **{dist_util.DEBUG_HASH_ENV: str(hash_dir)})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _sets() -> list[str]:
    return [arg for o in OVERRIDES for arg in ("--set", o)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    out, hashes = tmp / "run", tmp / "hashes"
    hashes.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "compressor", "train", "--recipe", str(RECIPE), "--out", str(out), "--no-progress", *_sets()]
    proc = subprocess.run(cmd, env=_env(hashes), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"out": out, "hashes": hashes, "tmp": tmp}


def test_ranks_end_identical_and_pruned(ddp_run: dict[str, Path]) -> None:
    r0 = json.loads((ddp_run["hashes"] / "rank0.json").read_text())
    r1 = json.loads((ddp_run["hashes"] / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["shapes"] == r1["shapes"]
    assert r0["plan_hash"] == r1["plan_hash"]
    assert r0["state_hash"] == r1["state_hash"]  # noise seeded identically: parameters never diverged
    # DemP removed hidden neurons while training (the MLP starts with 256 + 256)
    assert r0["shapes"]["features.0.weight"][0] < 256 or r0["shapes"]["features.2.weight"][0] < 256


def test_output_directory_complete_and_written_once(ddp_run: dict[str, Path]) -> None:
    out = ddp_run["out"]
    for rel in ("recipe.yaml", "metrics.jsonl", "train_summary.json", "model/plan.json", "model/weights.safetensors",
                "model/model.onnx", "model/report.json", "checkpoints/latest.json"):
        assert (out / rel).is_file(), rel
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "epoch" for r in records) == 2  # rank 0 only: no duplicated records
    assert sum(r["kind"] == "final" for r in records) == 1
    removals = [r for r in records if r["kind"] == "removal" and r.get("removed")]
    assert removals, "no neurons were removed during the DDP run"
    summary = json.loads((out / "train_summary.json").read_text())
    r0 = json.loads((ddp_run["hashes"] / "rank0.json").read_text())
    assert summary["plan_hash"] == r0["plan_hash"]
    assert summary["test_accuracy"] > 0.5
    # the steps per epoch follow the global batch, whatever the world size: 1797 * 0.8-ish / 32
    assert records[-1]["step"] == summary["step"]
    assert not list(out.glob("**/*.tmp"))


def test_resume_ddp_checkpoint_with_one_process(ddp_run: dict[str, Path]) -> None:
    src = ddp_run["out"]
    run = ddp_run["tmp"] / "resumed"
    shutil.copytree(src, run)
    ckpts = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir() and p.name.startswith("ckpt-"))
    assert len(ckpts) == 2
    shutil.rmtree(ckpts[-1])  # as if the run had stopped after epoch 1
    (run / "checkpoints" / "latest.json").unlink()
    hashes = ddp_run["tmp"] / "hashes1"
    hashes.mkdir()
    cmd = [sys.executable, "-m", "compressor", "train", "--resume", str(run), "--no-progress", "--no-export"]
    proc = subprocess.run(cmd, env=_env(hashes), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads((hashes / "rank0.json").read_text())
    assert r["world_size"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in records if x["kind"] == "epoch"] == [1, 2]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["plan_hash"] == r["plan_hash"]
    assert summary["test_accuracy"] > 0.5
    original = json.loads((src / "train_summary.json").read_text())
    assert summary["step"] == original["step"]  # same number of optimizer steps with 1 process as with 2


def test_batch_size_must_divide_world_size() -> None:
    assert dist_util.per_rank_batch_size(32, 4) == 8
    from compressor.errors import UsageError

    with pytest.raises(UsageError, match="not divisible by the world size 3"):
        dist_util.per_rank_batch_size(32, 3)


def test_sampler_global_batches_do_not_depend_on_world_size() -> None:
    data = list(range(50))
    one = dist_util.ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=3, batch_size=8, drop_last=False)
    one.set_epoch(2)
    ref = list(one)
    for start in (0, 2):
        shards = []
        for rank in range(2):
            s = dist_util.ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=3, batch_size=4,
                                                      drop_last=False)
            s.set_epoch(2, start)
            shards.append(list(s))
        batches = [sorted(shards[0][i:i + 4] + shards[1][i:i + 4]) for i in range(0, 8, 4)]
        expect = [sorted(ref[i:i + 8]) for i in range(start * 8, start * 8 + 16, 8)]
        assert batches == expect


def test_state_hash_sees_weights_and_shapes() -> None:
    a = torch.nn.Linear(3, 2)
    h = dist_util.state_hash(a)
    with torch.no_grad():
        a.weight[0, 0] += 1e-6
    assert dist_util.state_hash(a) != h
