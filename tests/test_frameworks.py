"""Lightning and the Hugging Face Trainer drive hyperfused optimizers: the lr their loggers show is the lr the
optimizer uses, and a run resumed from their checkpoints is bitwise the run that was never interrupted.

Each framework trains a Linear(8, 1) on a fixed regression set on CPU, (a) hf.Adam under a torch LR scheduler
and (b) hf.Adam whose lr (and betas) hf.SGD learns. What "the lr the optimizer used at step s" means:

- under a scheduler, the value in param_groups when the step begins (a plain optimizer adopts it at the step);
  checked against the schedule's own formula, and by torch.optim.Adam driven the same way ending on the same
  weights (an optimizer that ignored the scheduled values would end far outside the tolerance);
- for a learned lr (exact mode, the default), the value param_groups[0]["lr"] shows right after step s: the
  step first updates the lr from its hypergradient, then updates the weights with it. Both frameworks log the
  lr as it is before the step, so for a learned lr the logged value is the one the previous step used.

What the loggers receive is checked (Lightning: the CSV logger's file; Trainer: state.log_history), not
LearningRateMonitor.lrs: that list keeps the lr tensor itself, which the optimizer updates in place, so each
of its entries reads the latest value.

Resume: N steps, the framework's checkpoint, a new process-like run (new model, optimizer, trainer) resumed
from it for N more; weights, the optimizer's state_dict (the whole tower) and every level's
hyperparameters() are compared bitwise with 2N uninterrupted steps.

The packages are optional (the test extra and .ci/setup install them): each test skips when its framework is
missing.
"""
import csv
import glob

import pytest
import torch

import hyperfused as hf

N = 4                 # steps before the checkpoint
LR = 1e-2
HYPER_LR = 1e-4


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(32, 1, generator=g)
    return x, y


def _linear():
    """Linear(8, 1) with fixed weights (no use of the global RNG)."""
    net = torch.nn.Linear(8, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net


def _step_lr(s):
    """StepLR(step_size=2, gamma=0.5) at 0-based step s, as the float32 tensor in param_groups holds it."""
    return float(torch.tensor(LR * 0.5 ** (s // 2), dtype=torch.float32))


def _same(a, b, where="state"):
    """Bitwise equality of nested state (tensors: dtype, shape and every bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_resumed_bitwise(straight, resumed):
    (net_a, opt_a), (net_b, opt_b) = straight, resumed
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.equal(a, b), f"{name}: the resumed run's weights differ"
    _same(opt_a.state_dict(), opt_b.state_dict(), "optimizer.state_dict()")
    for lv_a, lv_b in zip(opt_a.levels, opt_b.levels):
        assert lv_a.hyperparameters() == lv_b.hyperparameters()


# ------------------------------------------------------------------------------------------------ Lightning
def _lightning(kind, tmp, steps, ckpt=None, torch_adam=False):
    """Fit `steps` steps (4 batches of 8 = one epoch per 4 steps); returns the module, the optimizer, the lrs
    logged by LearningRateMonitor (0-based step -> value, read from the CSV logger) and the lrs in param_groups
    before and after each optimizer step."""
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    x, y = _data()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _linear()
            self.before, self.after = [], []

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return torch.nn.functional.mse_loss(self.net(xb), yb)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            pg = optimizer.optimizer.param_groups[0] if hasattr(optimizer, "optimizer") else optimizer.param_groups[0]
            self.before.append(float(pg["lr"]))
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            self.after.append(float(pg["lr"]))

        def configure_optimizers(self):
            if kind == "learned":              # no scheduler: the lr is hf.SGD's to learn
                return hf.Adam(self.parameters(), lr=LR, hyper=hf.SGD(lr=HYPER_LR))
            opt = (torch.optim.Adam if torch_adam else hf.Adam)(self.parameters(), lr=LR)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    model = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    monitor = LearningRateMonitor(logging_interval="step")
    trainer = pl.Trainer(
        max_steps=steps, logger=CSVLogger(str(tmp), name="logs"), log_every_n_steps=1,
        callbacks=[monitor, ModelCheckpoint(dirpath=str(tmp / "ckpt"), every_n_train_steps=N, save_top_k=-1)],
        enable_checkpointing=True, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1)
    trainer.fit(model, loader, ckpt_path=ckpt)
    logged = {}
    for path in glob.glob(str(tmp / "logs" / "*" / "metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("lr-Adam"):
                    logged[int(row["step"])] = float(row["lr-Adam"])
    return model, trainer.optimizers[0], logged


def test_lightning_scheduled_lr_is_logged_as_used_and_resumes_bitwise(tmp_path):
    model, opt, logged = _lightning("scheduled", tmp_path / "a", 2 * N)
    assert isinstance(opt, hf.Adam) and opt.hyper is None
    # LearningRateMonitor logs at the start of each step: the scheduled value, which is what the step used
    assert logged == {s: _step_lr(s) for s in range(2 * N)}
    assert model.before == [_step_lr(s) for s in range(2 * N)]
    # the optimizer did use those values: torch.optim.Adam under the same schedule ends on the same weights
    # (tests/test_torch_parity.py's float32 tolerance)
    ref, _, ref_logged = _lightning("scheduled", tmp_path / "torch", 2 * N, torch_adam=True)
    assert ref_logged == pytest.approx(logged, rel=1e-7)   # torch's Adam keeps a python float lr
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    _lightning("scheduled", tmp_path / "b", N)
    (ckpt,) = glob.glob(str(tmp_path / "b" / "ckpt" / f"*step={N}.ckpt"))
    resumed, opt_r, logged_r = _lightning("scheduled", tmp_path / "c", 2 * N, ckpt=ckpt)
    assert logged_r == {s: logged[s] for s in range(N, 2 * N)}
    _assert_resumed_bitwise((model, opt), (resumed, opt_r))


def test_lightning_learned_lr_is_logged_and_resumes_bitwise(tmp_path):
    model, opt, logged = _lightning("learned", tmp_path / "a", 2 * N)
    assert opt.height == 1
    used = model.after                     # exact mode: the lr step s used is param_groups' after step s
    assert len(set(used)) > N              # the lr was learned (it moves every step after the first)
    assert used[-1] == opt.hyperparameters()["lr"] == float(opt.param_groups[0]["lr"])
    # LearningRateMonitor reads param_groups[0]["lr"] when step s begins: the lr step s-1 used (the initial
    # lr at step 0). The lr step s uses is made inside step s, from its gradient.
    assert logged == {s: float(torch.tensor(LR, dtype=torch.float32)) if s == 0 else used[s - 1]
                      for s in range(2 * N)}
    assert [logged[s] for s in range(2 * N)] == model.before

    _lightning("learned", tmp_path / "b", N)
    (ckpt,) = glob.glob(str(tmp_path / "b" / "ckpt" / f"*step={N}.ckpt"))
    resumed, opt_r, logged_r = _lightning("learned", tmp_path / "c", 2 * N, ckpt=ckpt)
    assert logged_r == {s: logged[s] for s in range(N, 2 * N)}
    assert resumed.after == used[N:]
    _assert_resumed_bitwise((model, opt), (resumed, opt_r))


# ----------------------------------------------------------------------------------------- HF Trainer
def _hf(sched, tmp, steps, resume=None, torch_adam=False):
    """Trainer.train for `steps` steps (batches of 4 from 32 samples, shuffled by the Trainer's seeded
    sampler; a checkpoint every N steps). sched: "step" (hf.Adam + StepLR), "learned" (hf.Adam learning its lr
    under a scheduler that leaves the lr alone), "default" (learned, with the scheduler the Trainer makes when
    given none). Returns the model, the optimizer, the logged learning_rate (1-based step -> value) and the lrs
    in param_groups before and after each optimizer step."""
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    x, y = _data()

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "y": y[i]}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _linear()

        def forward(self, x, y):
            return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}

    class Record(transformers.TrainerCallback):
        def __init__(self, opt):
            self.opt, self.before, self.after = opt, [], []

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.before.append(float(self.opt.param_groups[0]["lr"]))

        def on_optimizer_step(self, args, state, control, **kw):     # after optimizer.step(), before the scheduler's
            self.after.append(float(self.opt.param_groups[0]["lr"]))

    net = Net()
    if sched == "step":
        opt = (torch.optim.Adam if torch_adam else hf.Adam)(net.parameters(), lr=LR)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    else:
        opt = hf.Adam(net.parameters(), lr=LR, hyper=hf.SGD(lr=HYPER_LR))
        # a scheduler that sets nothing: ConstantLR with factor 1 writes back the lr it finds
        scheduler = (torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0) if sched == "learned"
                     else None)
    args = transformers.TrainingArguments(
        output_dir=str(tmp), max_steps=steps, per_device_train_batch_size=4, learning_rate=LR, logging_steps=1,
        save_steps=N, report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    record = Record(opt)
    trainer = transformers.Trainer(model=net, args=args, train_dataset=Data(), optimizers=(opt, scheduler),
                                   callbacks=[record])
    trainer.train(resume_from_checkpoint=resume)
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    return net, opt, logged, record


def test_hf_trainer_scheduled_lr_is_logged_as_used_and_resumes_bitwise(tmp_path):
    net, opt, logged, rec = _hf("step", tmp_path / "a", 2 * N)
    # the Trainer logs scheduler.get_last_lr() taken after optimizer.step() and before scheduler.step():
    # the scheduled value, which is what the step used
    assert logged == {s + 1: _step_lr(s) for s in range(2 * N)}
    assert rec.before == [_step_lr(s) for s in range(2 * N)]
    ref, _, ref_logged, _ = _hf("step", tmp_path / "torch", 2 * N, torch_adam=True)
    assert ref_logged == pytest.approx(logged, rel=1e-7)   # torch's Adam keeps a python float lr
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    _hf("step", tmp_path / "b", N)
    resumed, opt_r, logged_r, _ = _hf("step", tmp_path / "c", 2 * N, resume=str(tmp_path / "b" / f"checkpoint-{N}"))
    assert logged_r == logged              # the resumed log_history holds the first N steps' entries too
    _assert_resumed_bitwise((net, opt), (resumed, opt_r))


def test_hf_trainer_learned_lr_logged_one_step_behind_and_resumes_bitwise(tmp_path):
    net, opt, logged, rec = _hf("learned", tmp_path / "a", 2 * N)
    used = rec.after                       # exact mode: the lr step s used is param_groups' after step s
    assert len(set(used)) > N              # the lr was learned, the scheduler left it alone
    assert used[-1] == opt.hyperparameters()["lr"] == float(opt.param_groups[0]["lr"])
    # The Trainer logs scheduler.get_last_lr(): a copy the scheduler took of param_groups at its last step,
    # i.e. the lr as it was before this step. For a learned lr that is NOT the lr this step used (it is made
    # inside optimizer.step()) but the one the previous step used; what the optimizer used is
    # param_groups[0]["lr"] after the step (read it in a TrainerCallback.on_optimizer_step).
    assert logged == {s + 1: float(torch.tensor(LR, dtype=torch.float32)) if s == 0 else used[s - 1]
                      for s in range(2 * N)}
    assert logged[2 * N] != used[-1]

    _hf("learned", tmp_path / "b", N)
    resumed, opt_r, logged_r, rec_r = _hf("learned", tmp_path / "c", 2 * N,
                                          resume=str(tmp_path / "b" / f"checkpoint-{N}"))
    assert logged_r == logged              # the resumed log_history holds the first N steps' entries too
    assert rec_r.after == used[N:]
    _assert_resumed_bitwise((net, opt), (resumed, opt_r))


def test_hf_trainer_default_scheduler_restarts_a_learned_lr_every_step(tmp_path):
    """Given no scheduler, the Trainer makes one (linear decay): each of its steps writes the scheduled lr into
    param_groups, and a learned lr restarts from a value a scheduler sets. So the lr learns for one step at a
    time: what the optimizer used is the scheduled value moved by one hypergradient step, and the Trainer
    logs the scheduled value."""
    net, opt, logged, rec = _hf("default", tmp_path, 2 * N)
    # LambdaLR multiplies the float32 initial lr tensor by the linear factor
    scheduled = [float(torch.tensor(LR, dtype=torch.float32) * ((2 * N - s) / (2 * N))) for s in range(2 * N)]
    assert logged == {s + 1: scheduled[s] for s in range(2 * N)}
    assert rec.before == scheduled
    assert rec.after[0] == scheduled[0]        # the first step has no hypergradient yet
    assert all(u != v for u, v in zip(rec.after[1:], scheduled[1:]))
    # ... and from the scheduled value: one hypergradient step moves it by ~1e-4 here; a learned lr that kept
    # learning on instead would stay near 1e-2 while the schedule falls to 1.25e-3
    assert all(abs(u - v) < 1e-3 for u, v in zip(rec.after, scheduled))
