"""Worker processes of tests/test_distributed.py (2 ranks, gloo on 127.0.0.1)."""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import hyperfused as hf

STEPS = 12
GLOBAL_BATCH = 16


def make_model(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 17, bias=bias), nn.Tanh(), nn.Linear(17, 9, bias=bias), nn.Tanh(),
                         nn.Unflatten(1, (1, 3, 3)), nn.Conv2d(1, 3, 2, bias=bias), nn.Flatten(),
                         nn.Linear(12, 3, bias=bias))


def _model_for(name, seed=0):
    return make_model(seed, bias=not name.startswith("agd"))


def make_opt(name, params):
    if name == "adam/sgd":
        return hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-3))
    if name == "sgd/sgd":
        return hf.SGD(params, lr=0.05, hyper=hf.SGD(lr=1e-2))
    if name == "sgd-per-tensor/adam":
        return hf.SGD(params, lr=0.05, per_tensor=True, hyper=hf.Adam(lr=1e-3))
    if name == "adam/sgd one-pass":
        return hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-3), one_pass=True)
    if name == "agd":
        return hf.AGD(params)
    if name == "adamw-l2-max/sgd":        # AdamW's decay term in the lr hypergradient, summed over shards
        return hf.AdamW(params, lr=0.01, weight_decay=0.1, maximize=True, hyper=hf.SGD(lr=1e-3))
    if name == "agd spectral":
        return hf.AGD(params, norm="spectral")
    raise ValueError(name)


def batches(steps=STEPS):
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g))
            for _ in range(steps)]


def train(model, opt, data, rank=None, world=1):
    for x, y in data:
        if rank is not None:                       # this rank's half of the global batch
            per = GLOBAL_BATCH // world
            x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def single_process(name, steps=STEPS):
    """The reference: one process, the whole global batch."""
    model = _model_for(name)
    opt = make_opt(name, model.parameters())
    train(model, opt, batches(steps))
    return [p.detach().clone() for p in model.parameters()], _hyper(opt)


def _hyper(opt):
    if isinstance(opt, hf.AGD):
        return [{"eta": float(opt.eta)}]
    return [lv.hyperparameters() for lv in opt.levels]


def _full(p):
    from torch.distributed.tensor import DTensor
    return p.full_tensor() if isinstance(p, DTensor) else p.detach()


def run(rank, world, port, mode, name, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    done = False
    try:
        data = batches()
        if mode == "ddp":
            model = nn.parallel.DistributedDataParallel(_model_for(name))
            opt = make_opt(name, model.parameters())
            train(model, opt, data, rank, world)
            result = {"weights": [p.detach().clone() for p in model.parameters()],
                      "hyper": _hyper(opt)}
            gathered = [None] * world
            dist.all_gather_object(gathered, result)
            if rank == 0:
                torch.save(gathered, os.path.join(out_dir, "ddp.pt"))
        elif mode == "fsdp":
            from torch.distributed.fsdp import fully_shard
            model = _model_for(name)
            fully_shard(model)
            opt = make_opt(name, model.parameters())
            try:
                train(model, opt, data, rank, world)
            except NotImplementedError as exc:       # spectral AGD refuses sharded parameters
                if rank == 0:
                    torch.save({"error": str(exc)}, os.path.join(out_dir, "fsdp.pt"))
                dist.barrier()
                done = True
                return
            weights = [_full(p) for p in model.parameters()]
            if rank == 0:
                torch.save({"weights": weights, "hyper": _hyper(opt)}, os.path.join(out_dir, "fsdp.pt"))
        elif mode == "fsdp_dcp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.fsdp import fully_shard
            half = STEPS // 2
            model = _model_for(name)
            fully_shard(model)
            opt = make_opt(name, model.parameters())
            train(model, opt, data[:half], rank, world)
            ckpt = os.path.join(out_dir, "ckpt")
            dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=ckpt)
            train(model, opt, data[half:], rank, world)
            straight = [_full(p) for p in model.parameters()]
            straight_hyper = [lv.hyperparameters() for lv in opt.levels]

            model2 = _model_for(name, seed=123)          # other weights: everything must come from the checkpoint
            fully_shard(model2)
            opt2 = make_opt(name, model2.parameters())
            opt2.init_state()
            sd = {"model": model2.state_dict(), "optim": opt2.state_dict()}
            dcp.load(sd, checkpoint_id=ckpt)
            model2.load_state_dict(sd["model"])
            opt2.load_state_dict(sd["optim"])
            train(model2, opt2, data[half:], rank, world)
            resumed = [_full(p) for p in model2.parameters()]
            if rank == 0:
                torch.save({"straight": straight, "resumed": resumed, "straight_hyper": straight_hyper,
                            "resumed_hyper": [lv.hyperparameters() for lv in opt2.levels]},
                           os.path.join(out_dir, "dcp.pt"))
        dist.barrier()
        done = True
    finally:
        dist.destroy_process_group()
        if done:
            # Leave without the interpreter's teardown: gloo's worker threads can still be joinable when their
            # destructors run at exit ("terminate called without an active exception", SIGABRT), seen once in
            # ~40 runs of these tests. Every result file is written and closed and the group destroyed by now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
