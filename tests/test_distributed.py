"""DDP and FSDP2 (2 processes, gloo on 127.0.0.1, spawned by the tests, bounded in time).

- DDP: every rank ends with bitwise identical weights and hyperparameters.
- FSDP2 (fully_shard, DTensor shards): equal to single-process training on the same global batch (float32,
  1e-4 relative over 12 steps); the level-0 hypergradient sums are all-reduced, one collective per group.
- Checkpoints with torch.distributed.checkpoint resume identically.
"""
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dist_worker

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TIMEOUT = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(mode, name, out_dir, world=2):
    ctx = mp.start_processes(dist_worker.run, args=(world, _free_port(), mode, name, str(out_dir)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.time() + TIMEOUT
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{mode} workers did not finish in {TIMEOUT} s")


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", ["adam/sgd", "sgd-per-tensor/adam"])
def test_ddp_ranks_stay_bitwise_identical(tmp_path, name):
    _spawn("ddp", name, tmp_path)
    r0, r1 = torch.load(tmp_path / "ddp.pt")
    for a, b in zip(r0["weights"], r1["weights"]):
        assert torch.equal(a, b)
    assert r0["hyper"] == r1["hyper"]
    lr0 = r0["hyper"][0]["lr"]
    assert lr0 != (0.01 if name == "adam/sgd" else [0.05] * len(lr0))          # something was learned


@pytest.mark.parametrize("name", ["adam/sgd", "sgd/sgd", "sgd-per-tensor/adam", "adam/sgd one-pass", "agd",
                                  "adamw-l2-max/sgd"])
def test_fsdp2_matches_single_process(tmp_path, name):
    ref_w, ref_h = dist_worker.single_process(name)
    _spawn("fsdp", name, tmp_path)
    got = torch.load(tmp_path / "fsdp.pt")
    for a, b in zip(got["weights"], ref_w):
        assert a.shape == b.shape
        assert _rel(a, b) <= 1e-4
    for la, lb in zip(got["hyper"], ref_h):
        for k, v in lb.items():
            assert torch.allclose(torch.tensor(la[k], dtype=torch.float64), torch.tensor(v, dtype=torch.float64),
                                  rtol=1e-4, atol=0), (k, la[k], v)


def test_spectral_agd_is_refused_under_fsdp2_with_a_clear_error(tmp_path):
    _spawn("fsdp", "agd spectral", tmp_path)
    got = torch.load(tmp_path / "fsdp.pt")
    assert "norm='spectral' is not supported with sharded" in got["error"]


def test_fsdp2_checkpoint_resumes_identically(tmp_path):
    _spawn("fsdp_dcp", "adam/sgd", tmp_path)
    got = torch.load(tmp_path / "dcp.pt")
    for a, b in zip(got["resumed"], got["straight"]):
        assert torch.equal(a, b)
    assert got["resumed_hyper"] == got["straight_hyper"]
