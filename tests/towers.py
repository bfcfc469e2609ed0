"""Test helpers: one tower description, built both as hyperfused optimizers and as the paper's package.

A tower is a list of levels, bottom first; each level is a tuple (kind, kwargs), kind one of
"sgd", "sgd_per" (per-tensor lr), "adam", "adam_lr" (learn lr only), "rmsprop", "rmsprop_lr", "adagrad".
"""
import copy

import torch
import torch.nn as nn

import hyperfused as hf

try:
    from gradient_descent_the_ultimate_optimizer import gdtuo
except ImportError:  # pragma: no cover - the package is a test dependency (.ci/run installs it)
    gdtuo = None


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).to(dtype)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def cnn(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return SmallCNN().to(dtype)


def batches(model_kind, n, dtype=torch.float64, seed=1, batch=16):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 6) if model_kind == "mlp" else (batch, 1, 6, 6)
    return [(torch.randn(*shape, generator=g).to(dtype), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def loss_fn(out, y):
    return nn.functional.cross_entropy(out, y)


# ------------------------------------------------------------------ hyperfused side
# Backend-agreement tests give the levels above level 0 the paper's damped start (UPPER): Adam's beta
# hypergradients at t = 1 are zero in exact arithmetic and round-off in floating point, and a level that
# normalises its gradient from a zero start (Adam with v_0 = 0, RMSprop/Adagrad with eps after the root: torch's
# defaults) turns that round-off into steps of +-lr, so two backends summing in different orders part by design.
# The paper's package's conventions, which hyperfused's torch-like defaults leave one argument away: SGD's lr
# 0.01, Adam's v starting at eps, Adagrad's accumulator at 0.1, eps under the square root for Adagrad/RMSprop.
PAPER = {"sgd": dict(lr=0.01), "sgd_per": dict(lr=0.01), "adam": dict(initial_exp_avg_sq=1e-8),
         "adam_lr": dict(initial_exp_avg_sq=1e-8), "rmsprop": dict(eps_inside_sqrt=True),
         "rmsprop_lr": dict(eps_inside_sqrt=True),
         "adagrad": dict(initial_accumulator_value=0.1, eps_inside_sqrt=True)}


def build_hf(tower, params=None, **extra):
    hyper = None
    for depth in range(len(tower) - 1, -1, -1):
        kind, kw = tower[depth]
        kw = dict(PAPER[kind], **kw)
        args = {}
        if kind == "sgd_per":
            cls, kw["per_tensor"] = hf.SGD, True
        elif kind == "adam_lr":
            cls, kw["learn"] = hf.Adam, ("lr",)
        elif kind == "rmsprop_lr":
            cls, kw["learn"] = hf.RMSprop, ("lr",)
        else:
            cls = {"sgd": hf.SGD, "adam": hf.Adam, "rmsprop": hf.RMSprop, "adagrad": hf.Adagrad}[kind]
        if hyper is None:
            kw.pop("learn", None)   # the top learns nothing
        if depth == 0:
            kw.update(extra)
            hyper = cls(params, hyper=hyper, **kw, **args)
        else:
            hyper = cls(hyper=hyper, **kw)
    return hyper


# ------------------------------------------------------------------ the paper's package side
_NAMES = {"sgd": ["alpha", "mu"], "sgd_per": None, "adam": ["alpha", "beta1", "beta2"],
          "adam_lr": ["alpha"], "rmsprop": ["alpha", "gamma"], "rmsprop_lr": ["alpha"], "adagrad": ["alpha"]}


def build_gdtuo(tower, model_names):
    opt = gdtuo.NoOpOptimizer()
    for depth in range(len(tower) - 1, -1, -1):
        kind, kw = tower[depth]
        lr = kw.get("lr")
        if kind == "sgd":
            opt = gdtuo.SGD(alpha=kw.get("lr", 0.01), mu=kw.get("momentum", 0.0), optimizer=opt)
        elif kind == "sgd_per":
            names = model_names if depth == 0 else _NAMES[tower[depth - 1][0]]
            opt = gdtuo.SGDPerParam(params=[(n, kw.get("lr", 0.01)) for n in names], optimizer=opt)
        elif kind in ("adam", "adam_lr"):
            b1, b2 = kw.get("betas", (0.9, 0.999))
            cls = gdtuo.Adam if kind == "adam" else gdtuo.AdamBaydin
            opt = cls(alpha=kw.get("lr", 1e-3), beta1=b1, beta2=b2, optimizer=opt)
        elif kind in ("rmsprop", "rmsprop_lr"):
            cls = gdtuo.RMSProp if kind == "rmsprop" else gdtuo.RMSPropAlpha
            opt = cls(alpha=kw.get("lr", 0.01), gamma=kw.get("alpha", 0.99), optimizer=opt)
        elif kind == "adagrad":
            opt = gdtuo.AdaGrad(alpha=kw.get("lr", 0.01), optimizer=opt)
        else:
            raise ValueError(kind)
    return opt


def gdtuo_values(kind, level):
    """Hyperparameter values of one package level, in hyperfused's names."""
    P = level.parameters
    sig = lambda r: (r.tanh() + 1) / 2
    if kind == "sgd":
        return {"lr": float(P["alpha"]), "momentum": float(P["mu"])}
    if kind == "sgd_per":
        return {"lr": [float(v) for v in P.values()]}
    if kind == "adam":
        return {"lr": float(P["alpha"]), "beta1": float(sig(P["beta1"])), "beta2": float(sig(P["beta2"]))}
    if kind == "adam_lr":
        return {"lr": float(P["alpha"]), "beta1": level.beta1, "beta2": level.beta2}
    if kind == "rmsprop":
        return {"lr": float(P["alpha"] ** 2), "alpha": float(sig(P["gamma"]))}
    if kind == "rmsprop_lr":
        return {"lr": float(P["alpha"] ** 2), "alpha": level.gamma}
    if kind == "adagrad":
        return {"lr": float(P["alpha"])}
    raise ValueError(kind)


def run_both(tower, model_kind="mlp", steps=20, dtype=torch.float64, backend="auto"):
    """Train the same model from the same weights on the same batches with both; return what to compare."""
    model = mlp(dtype) if model_kind == "mlp" else cnn(dtype)
    ours = copy.deepcopy(model)
    data = batches(model_kind, steps, dtype)

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        names = [n for n, _ in model.named_parameters()]
        mw = gdtuo.ModuleWrapper(model, optimizer=build_gdtuo(tower, names))
        mw.initialize()
        for x, y in data:
            mw.begin()
            mw.zero_grad()
            loss = loss_fn(mw.forward(x), y)
            loss.backward(create_graph=True)
            mw.step()
    finally:
        torch.set_default_dtype(old)
    ref_weights = [p.detach() for p in model.parameters()]
    ref_levels, lv = [], mw.optimizer
    for kind, _ in tower:
        ref_levels.append(gdtuo_values(kind, lv))
        lv = lv.optimizer

    opt = build_hf(tower, ours.parameters(), backend=backend)
    for x, y in data:
        opt.zero_grad()
        loss_fn(ours(x), y).backward()
        opt.step()
    our_weights = [p.detach() for p in ours.parameters()]
    our_levels = [lv.hyperparameters() for lv in opt.levels]
    return ref_weights, our_weights, ref_levels, our_levels, opt


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


UPPER = {"adam": PAPER["adam"], "rmsprop": PAPER["rmsprop"], "adagrad": PAPER["adagrad"]}
