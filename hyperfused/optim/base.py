"""The tower logic, written once for every optimizer kind.

A tower has levels 0..K. Level 0 is a ``torch.optim.Optimizer`` over the model's parameters; level k >= 1
optimizes the learned *raw* hyperparameters of level k-1 (a small vector per param group), and the top
level's hyperparameters are fixed. One ``step()`` (docs/MATH.md §1.2):

1. bottom-up hypergradients: ``delta_0`` is the big reduction sum(g_t * J_0) over the group's tensors
   (J_0 rebuilt from the optimizer state, never stored), ``delta_k`` the same contraction on the tiny
   vectors of level k;
2. top-down updates: level K updates level K-1's raw hyperparameters, ..., level 1 updates level 0's;
3. level 0 updates the parameters with its new hyperparameters.

Everything is computed on the parameters' device with no host synchronisation: whether a step is skipped
(a non-finite gradient, hypergradient or hyperparameter) is a device-side boolean, and every write is
``where(ok, new, old)``, so a skipped step leaves every level bitwise as it was.
"""
from __future__ import annotations

import collections
import copy
import math
import numbers
import operator
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .. import kinds, ops
from ..ops import packed
from ..ops import reference as ref
from ._checks import check_flag, check_nonneg
from .program import StepProgram

Tensor = torch.Tensor
ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]

WD = "weight_decay"           # a decoupled decay, learnable at level 0 besides the kind's hyperparameters
_TOWER_KEY = "hyperfused"     # the key of the tower's state in ``self.state`` (a string: not a parameter)
_PROGRAMS = True              # the usual step runs as a StepProgram (program.py) where one covers it (tests: off)


class HyperOptimizer(torch.optim.Optimizer):
    """Base class of the hypergradient optimizers. Subclasses describe one kind of optimizer.

    Constructed with ``params`` it is level 0 of a tower and an ordinary ``torch.optim.Optimizer``;
    constructed without, it is a level to pass as another optimizer's ``hyper=``.
    """

    #: the optimizer kind (hyperfused.kinds), set by each subclass
    kind: str = ""
    #: torch.amp.GradScaler hands over the scale and its inf check instead of unscaling first
    _step_supports_amp_scaling = True
    #: hyperparameter names in canonical order (the order of the flattened vector the level above sees): the
    #: kinds table's, set from ``kind``
    hyper_names: Tuple[str, ...] = ()
    #: the names a level above may learn (the kinds table's; every hyperparameter unless it says otherwise)
    learnable_names: Tuple[str, ...] = ()
    #: weight decay is always decoupled (x *= 1 - lr wd before the update), as in Lion
    _decoupled = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            cls.hyper_names = kinds.kind(cls.kind).hyper
            cls.learnable_names = kinds.kind(cls.kind).learnable_names
    #: param_groups keys of the torch.optim counterpart not implemented here, with the value that means "off":
    #: a group (or an edit) that sets one otherwise is refused, never ignored
    _torch_only: Dict[str, Any] = {}

    # ---------------------------------------------------------------- subclass hooks
    @classmethod
    def _values_from(cls, d: Dict[str, Any]) -> Dict[str, float]:
        """Hyperparameter values (name -> float) from a param group or constructor dict."""
        return {name: d[name] for name in cls.hyper_names}

    @classmethod
    def _cfg_from(cls, d: Dict[str, Any], values: Dict[str, float]) -> Dict[str, Any]:
        """The static configuration of the element-wise math (eps, momentum on/off...)."""
        return {}

    @classmethod
    def _default_learn(cls, values: Dict[str, float]) -> Tuple[str, ...]:
        return cls.learnable_names

    #: torch.optim keywords that change nothing here (every step is already one fused multi-tensor call, and
    #: state stays on the parameters' device): accepted and kept in param_groups as torch keeps them
    _NO_EFFECT = ("foreach", "fused", "capturable")

    @classmethod
    def _group_cfg(cls, d: Dict[str, Any], values: Dict[str, float], where: str) -> Dict[str, Any]:
        """Level 0's static configuration, checked: the kind's (``_cfg_from``) and torch's gradient transforms."""
        return dict(cls._cfg_from(d, values), **cls._transform_cfg(d, where))

    @classmethod
    def _transform_cfg(cls, d: Dict[str, Any], where: str) -> Dict[str, Any]:
        """torch's gradient transforms of a param group (or constructor dict), checked: ``maximize`` (g -> -g),
        ``weight_decay`` (L2: g -> g + weight_decay * x, torch's order: after maximize) or, with
        ``decoupled_weight_decay`` (AdamW), x -> x (1 - lr weight_decay) before the update."""
        wd = d.get("weight_decay", 0.0)
        check_nonneg(wd, "weight_decay", where)
        out = {"weight_decay": float(wd)}
        for key in ("maximize", "decoupled_weight_decay"):
            out[key] = check_flag(d.get(key, False), key, where)
        out["decoupled_weight_decay"] = out["decoupled_weight_decay"] or cls._decoupled
        return out

    @classmethod
    def _check_values(cls, values: Dict[str, float], learned: Sequence[str], where: str) -> None:
        pass

    # ---------------------------------------------------------------- construction
    def _setup(self, params: Optional[ParamsT], defaults: Dict[str, Any], hyper: Optional["HyperOptimizer"],
               learn: Optional[Sequence[str]], per_tensor: bool, backend: str, one_pass: bool = False) -> None:
        if isinstance(params, (int, float)) or isinstance(params, Tensor) and params.dim() == 0:
            raise TypeError(f"{type(self).__name__}: the first argument is params (an iterable of tensors or "
                            f"param-group dicts), got the number {params!r}; for a level of a tower pass the "
                            f"learning rate by keyword, e.g. hf.{type(self).__name__}(lr={params!r})")
        if hyper is not None:
            if not isinstance(hyper, HyperOptimizer):
                raise TypeError(f"hyper= must be a hyperfused optimizer (hf.SGD, hf.Adam, hf.RMSprop, "
                                f"hf.Adagrad) constructed without params, got {type(hyper).__name__}")
            if hyper._is_root:
                raise ValueError("hyper= got an optimizer constructed with params; a level of a tower is "
                                 "constructed without them, e.g. hyper=hf.SGD(lr=1e-5)")
            if hyper._owner is not None:
                raise ValueError("this hyper= level already belongs to another tower; construct a new one")
        self.hyper: Optional[HyperOptimizer] = hyper
        self._learn_request = None if learn is None else self._normalize_learn(learn, defaults)
        self._per_tensor = bool(per_tensor)
        self._backend_request = backend
        self._one_pass = bool(one_pass)
        if one_pass and params is None:
            raise ValueError(f"{type(self).__name__}: one_pass=True is an option of the optimizer at level 0 "
                             f"(the one constructed with params)")
        self._backend = ops.resolve_backend(backend)
        self._owner: Optional[HyperOptimizer] = None      # the root optimizer this level belongs to
        self._depth = 0
        self._is_root = params is not None
        self._level_values = {k: v for k, v in defaults.items()}
        if hyper is None and self._learn_request:
            raise ValueError(f"{type(self).__name__}: learn={tuple(self._learn_request)} needs a level above "
                             f"to learn them (hyper=...); a level with no level above learns nothing")
        if params is None:
            # torch's step() wrapper runs the step hooks before our check; give it empty ones
            self._optimizer_step_pre_hooks = collections.OrderedDict()
            self._optimizer_step_post_hooks = collections.OrderedDict()
            # a level of a tower: check its own values now, with the learned set it would have
            vals = self._values_from(defaults)
            self._check_values(vals, self._learned_for(vals), f"{type(self).__name__} level")
            self._cfg_from(defaults, vals)
            self._refuse_torch_only(f"{type(self).__name__} level", defaults)
            tr = self._transform_cfg(defaults, f"{type(self).__name__} level")
            if tr["weight_decay"] or tr["maximize"]:
                raise ValueError(f"{type(self).__name__}: weight_decay (here {tr['weight_decay']!r}) and maximize "
                                 f"(here {tr['maximize']!r}) are options of the optimizer at level 0 (the one "
                                 f"constructed with params); a level of a tower optimizes the hyperparameters "
                                 f"below it as they are: give weight_decay=0 and maximize=False (hf.AdamW's "
                                 f"default weight_decay is 1e-2: hf.Adam is AdamW without it)")
            return
        self._owner = self
        level, depth = hyper, 1
        while level is not None:
            level._owner, level._depth = self, depth
            lv = level._values_from(level._level_values)
            level._check_values(lv, level._learned_for(lv), f"level {depth} ({type(level).__name__})")
            level, depth = level.hyper, depth + 1
        self._lr_alias: Dict[int, Tensor] = {}   # the tensor param_groups[gi]["lr"] holds
        self._lr_pub: Dict[int, Tensor] = {}     # the value last written to (or adopted from) it
        self._lr_ver: Dict[int, int] = {}        # its version counter then
        self._seen: Dict[int, Dict[str, Any]] = {}   # the other param_group values the tower last adopted
        super().__init__(params, defaults)

    def _normalize_learn(self, learn: Sequence[str], d: Optional[Dict[str, Any]] = None) -> Tuple[str, ...]:
        """``learn`` checked and in canonical order: the kind's names in column order, then ``weight_decay`` (a
        decoupled decay's, learned as it is; ``d``: the constructor's or param group's dict)."""
        if isinstance(learn, str):
            learn = (learn,)
        names = tuple(learn)
        wd = WD in names
        if wd:
            d = self._level_values if d is None else d
            if not (self._decoupled or d.get("decoupled_weight_decay", False)) or "weight_decay" not in d:
                raise ValueError(f"{type(self).__name__}: weight_decay is learned for a decoupled decay only "
                                 f"(hf.AdamW, hf.Lion, Adam with decoupled_weight_decay=True), at level 0; torch's "
                                 f"L2 decay (weight_decay on the gradient) stays fixed")
            names = tuple(n for n in names if n != WD)
        for n in names:
            if n in self.hyper_names and n not in self.learnable_names:
                raise ValueError(f"{type(self).__name__}: {n!r} cannot be learned (its Jacobian is zero: it acts "
                                 f"through the sign of the update only); it can learn "
                                 f"{', '.join(repr(h) for h in self.learnable_names)}")
            if n not in self.hyper_names:
                raise ValueError(f"{type(self).__name__}: unknown name {n!r} in learn=; "
                                 f"it can learn {', '.join(repr(h) for h in self.learnable_names)}")
        if not names and not wd:
            raise ValueError(f"{type(self).__name__}: learn=() learns nothing; leave out hyper= instead")
        return tuple(h for h in self.hyper_names if h in names) + ((WD,) if wd else ())

    def _kernel_learned(self, learned: Sequence[str]) -> Tuple[str, ...]:
        """What the level-0 kernels learn for ``learned``: the kind's names; a learned decoupled decay needs the
        kind's own lr term (its hypergradient is built from it, docs/MATH.md §4.6), so lr too."""
        if WD not in learned:
            return tuple(learned)
        kl = tuple(n for n in learned if n != WD)
        return kl if "lr" in kl else ("lr",) + kl

    def _learned_for(self, values: Dict[str, float], request: Optional[Tuple[str, ...]] = None) -> Tuple[str, ...]:
        if self.hyper is None:
            return ()
        req = self._learn_request if request is None else request
        if req is None:
            return self._default_learn(values)
        return req

    @property
    def levels(self) -> List["HyperOptimizer"]:
        """This level and every level above it, bottom to top."""
        out, lv = [], self
        while lv is not None:
            out.append(lv)
            lv = lv.hyper
        return out

    @property
    def height(self) -> int:
        """Tower height: the number of levels above this one."""
        return len(self.levels) - 1

    # ---------------------------------------------------------------- param groups
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """As torch's; a group that is refused leaves the optimizer exactly as it was."""
        n_groups = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            self._check_new_group(n_groups)
        except Exception:
            del self.param_groups[n_groups:]
            tower = self.state.get(_TOWER_KEY)
            if tower is not None:
                tower["groups"].pop(n_groups, None)
                if n_groups == 0:
                    del self.state[_TOWER_KEY]
            for d in (self._lr_alias, self._lr_pub, self._lr_ver, self._seen):
                d.pop(n_groups, None)
            raise

    def _check_new_group(self, gi: int) -> None:
        group = self.param_groups[gi]
        self._refuse_torch_only(f"param group {gi}", group)
        params = group["params"]
        devices = {p.device for p in params}
        for p in params:
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters "
                                 f"(got one of dtype {p.dtype} and shape {tuple(p.shape)})")
            if not p.is_floating_point():
                raise TypeError(f"{type(self).__name__} optimizes floating-point parameters only "
                                f"(got dtype {p.dtype})")
        if len(devices) > 1:
            raise ValueError(f"param group {gi} holds parameters on different devices "
                             f"({', '.join(sorted(str(d) for d in devices))}); put each device in its own group")
        if group.get("learn") is not None:
            group["learn"] = self._normalize_learn(group["learn"], group)
        if self.hyper is None and group.get("learn"):
            raise ValueError(f"param group {gi}: learn={group['learn']} needs a level above (hyper=...)")
        vals = self._values_from(group)
        self._check_values(vals, self._group_learned(group), f"param group {gi}")
        self._group_cfg(group, vals, f"param group {gi}")
        if params:
            self._publish_lr(gi)

    def _group_learned(self, group: Dict[str, Any]) -> Tuple[str, ...]:
        vals = self._values_from(group)
        return self._learned_for(vals, group.get("learn"))

    # ---------------------------------------------------------------- tower state
    def _hyper_dtype(self, group) -> torch.dtype:
        return torch.float64 if any(p.dtype == torch.float64 for p in group["params"]) else torch.float32

    def _tower(self) -> Dict[str, Any]:
        t = self.state.get(_TOWER_KEY)
        if t is None:
            dev = self.param_groups[0]["params"][0].device if self.param_groups[0]["params"] else "cpu"
            t = {"skipped_steps": torch.zeros((), dtype=torch.int64, device=dev), "groups": {}}
            self.state[_TOWER_KEY] = t
        return t

    def _group_tower(self, gi: int) -> Dict[str, Any]:
        """Per-group levels: [{"hp": {name: tensor}, "state": {...}}, ...] (hp raw when learned)."""
        tower = self._tower()
        gt = tower["groups"].get(gi)
        if gt is not None:
            return gt
        group = self.param_groups[gi]
        dt = self._hyper_dtype(group)
        dev = group["params"][0].device
        n = len(group["params"])
        levels = []
        specs = self._level_specs(gi)
        units = n          # how many "tensors" level k sees: model tensors, then entries of the vector below
        for k, (lv, vals, learned, per_tensor, cfg) in enumerate(specs):
            hp = {}
            names = lv.hyper_names + ((WD,) if WD in learned else ())
            for name in names:
                val = torch.tensor(float(cfg[WD] if name == WD else vals[name]), dtype=dt, device=dev)
                if name in learned:
                    val = ref.to_raw(lv.kind, name, val)
                if name == "lr" and per_tensor:
                    val = val.repeat(units)
                hp[name] = val
            rec: Dict[str, Any] = {"hp": hp}
            if k >= 1:
                x0 = torch.zeros(units, dtype=dt, device=dev)
                rec["state"] = ref.KINDS[lv.kind][0](x0, cfg, learned)
                rec["state"]["valid"] = torch.zeros((), dtype=torch.bool, device=dev)
                fixed = kinds.KINDS[lv.kind].fixed
                if fixed:     # (level 0's are in param_groups) what the checkpoint must agree on (_check_loaded)
                    rec["fixed"] = {key: torch.tensor(float(cfg.get(key, 0.0)), dtype=torch.float64, device=dev)
                                    for key in fixed}
            levels.append(rec)
            units = sum(hp[name].numel() for name in learned)
        gt = {"levels": levels}
        tower["groups"][gi] = gt
        if self.hyper is not None and group.get("learn") is None:
            # what the tower learns is fixed from here on (SGD's default depends on momentum's value): a later
            # edit of a value then changes that value, never the tower's shape
            group["learn"] = specs[0][2]
        self._seen[gi] = self._snapshot(group)
        return gt

    def _level_specs(self, gi: int) -> List[Tuple["HyperOptimizer", Dict[str, float], Tuple[str, ...], bool, dict]]:
        """(level, initial values, learned names, per_tensor, cfg) for every level of group ``gi``. Kept while the
        group's values are the ones last adopted (``_seen[gi]``, replaced by every adoption): each step reads them,
        and checking and building them is a good part of a small model's step."""
        seen = self._seen.get(gi) if hasattr(self, "_seen") else None
        cache = self.__dict__.setdefault("_specs_cache", {})
        hit = cache.get(gi)
        if seen is not None and hit is not None and hit[0] is seen and hit[1] is self.param_groups[gi]:
            return hit[2]
        specs = self._build_specs(gi)
        if seen is not None:
            cache[gi] = (seen, self.param_groups[gi], specs)
        return specs

    def _build_specs(self, gi: int):
        group = self.param_groups[gi]
        vals0 = self._values_from(group)
        specs = [(self, vals0, self._group_learned(group), bool(group.get("per_tensor", False)),
                  self._group_cfg(group, vals0, f"param group {gi}"))]
        for lv in self.levels[1:]:
            v = lv._values_from(lv._level_values)
            specs.append((lv, v, lv._learned_for(v), lv._per_tensor, lv._cfg_from(lv._level_values, v)))
        # the flat size of a per-tensor level above level 0 counts entries, and level k's "tensors" are the
        # entries of level k-1's vector: one lr per entry
        return specs

    @staticmethod
    def _value_of(spec, hp: Dict[str, Tensor], name: str) -> Tensor:
        """The value of hyperparameter ``name`` from its raw form (each parametrised one costs tensor ops)."""
        lv, _, learned, _, _ = spec
        return ref.to_value(lv.kind, name, hp[name]) if name in learned else hp[name]

    @classmethod
    def _values_of(cls, spec, hp: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {name: cls._value_of(spec, hp, name) for name in hp}

    # ---------------------------------------------------------------- param_groups edits (schedulers, users)
    # param_groups[gi]["lr"] is a tensor that shows level 0's current lr (the mean of per-tensor lrs) and that
    # torch's LR schedulers change in place (fill_). Each step first adopts what was changed there since the
    # last step, by assignment or in place: a fixed lr takes the new value, a learned lr restarts from it. The
    # other hyperparameters in param_groups (momentum, betas, alpha, eps, ...) are adopted from the next step as
    # torch would, after the same checks as the constructor's; what shapes the tower (learn, per_tensor) is
    # refused once there is state.
    _STRUCTURAL = ("learn", "per_tensor")

    def _snapshot(self, group: Dict[str, Any]) -> Dict[str, Any]:
        return {k: copy.deepcopy(group[k]) for k in self.defaults if k not in ("params", "lr") and k in group}

    def _publish_lr(self, gi: int, spec=None) -> None:
        group = self.param_groups[gi]
        gt = self._group_tower(gi)
        spec = spec or self._level_specs(gi)[0]
        lr = self._value_of(spec, gt["levels"][0]["hp"], "lr")
        lr = lr.mean() if lr.dim() else lr
        alias = self._lr_alias.get(gi)
        if alias is None or group["lr"] is not alias:
            # a tensor the user put in param_groups becomes the one shown there (schedulers fill it in place)
            new = group.get("lr")
            alias = new if (isinstance(new, Tensor) and new.dim() == 0 and new.is_floating_point()
                            and new.device == lr.device and not new.requires_grad and not new.is_inference()
                            ) else torch.empty_like(lr)
            self._lr_alias[gi] = alias
        pub = self._lr_pub.get(gi)
        if pub is None or pub.dtype != alias.dtype or pub.device != alias.device:
            pub = self._lr_pub[gi] = torch.empty_like(alias)
        if torch.compiler.is_compiling():
            ref.inplace(alias).copy_(lr)
            ref.inplace(pub).copy_(alias)
        else:                   # (eager: one op for both; pub has alias's dtype, so it rounds lr as alias does)
            ref.copy_all([alias, pub], [lr, lr])
        group["lr"] = alias
        self._lr_ver[gi] = alias._version      # an in-place change (a scheduler's fill_) moves the counter

    def _sync_group(self, gi: int) -> Optional[Tensor]:
        """Adopt what changed in ``param_groups[gi]`` since the last step. Returns None, or a 0-dim bool tensor
        that is False when a tensor lr set there is negative or not finite (that step is then skipped and the
        lr not adopted). A refused edit raises before anything changes."""
        group = self.param_groups[gi]
        gt = self._group_tower(gi)
        seen = self._seen.get(gi)
        if seen is not None:
            # the values compared last time, when all immutable (numbers, strings, tuples of them): the same
            # objects in the group mean nothing changed, without comparing them again
            same = self.__dict__.setdefault("_seen_same", {}).get(gi)
            if same is not None and same[0] is seen and same[1] is group and all(
                    group.get(k, _MISSING) is v for k, v in same[2]):
                return self._adopt_lr(gi, gt)
            changed = [k for k in seen if not _same(group.get(k, _MISSING), seen[k])]
            if changed:
                self._adopt_values(gi, gt, changed)
            else:
                now = tuple((k, group.get(k, _MISSING)) for k in seen)
                if all(_immutable(v) for _, v in now):
                    self._seen_same[gi] = (seen, group, now)
        return self._adopt_lr(gi, gt)

    def _refuse_torch_only(self, where: str, group: Dict[str, Any]) -> None:
        for k, off in self._torch_only.items():
            if k in group and not _same(group[k], off):
                raise ValueError(f"{where}: {k}={group[k]!r} is not supported by hf.{type(self).__name__} "
                                 f"(torch.optim.{type(self).__name__} has it; only {k}={off!r} here)")

    def _adopt_values(self, gi: int, gt: Dict[str, Any], changed: List[str]) -> None:
        group = self.param_groups[gi]
        # (torch's keys not implemented here are in defaults, so the snapshot sees them change)
        self._refuse_torch_only(f"param group {gi}", group)
        for k in changed:
            if k in self._STRUCTURAL:
                raise ValueError(f"param group {gi}: {k} cannot change once the optimizer exists (it decides the "
                                 f"shape of the tower's state): {self._seen[gi][k]!r} -> {group.get(k)!r}; "
                                 f"construct a new optimizer")
            if k not in group:
                raise ValueError(f"param group {gi}: the entry {k!r} was removed")
        vals = self._values_from(group)
        vals["lr"] = 0.0          # the lr is checked where it is adopted (reading a device tensor would sync)
        learned = self._group_learned(group)
        self._check_values(vals, learned, f"param group {gi}")
        cfg = self._group_cfg(group, vals, f"param group {gi}")
        hp = gt["levels"][0]["hp"]
        old = self._values_from(dict(self._seen[gi], lr=0.0))
        if WD in learned and WD in changed:     # a learned decay restarts from the edited value
            ref.inplace(hp[WD]).fill_(cfg[WD])
        for name in self.hyper_names:           # only the values that changed (a learned one restarts there)
            if name == "lr" or name not in hp or float(vals[name]) == float(old[name]):
                continue
            val = torch.tensor(float(vals[name]), dtype=torch.float64)
            ref.inplace(hp[name]).fill_(float(ref.to_raw(self.kind, name, val) if name in learned else val))
        # state a new configuration needs (e.g. SGD's momentum switched on): created as at a first step; those
        # tensors' last update had no such state, so they carry no Jacobian into the next step
        x = torch.empty(0)
        need = [k for k in ref.KINDS[self.kind][0](x, cfg, self._kernel_learned(learned))]
        for p in group["params"]:
            st = self.state.get(p)
            if st and "moved" in st and any(k not in st for k in need):
                fresh = self._fresh_state(p, cfg, learned)
                for k in need:
                    if k not in st:
                        st[k] = fresh[k]
                st["moved"].fill_(False)
        self._seen[gi] = self._snapshot(group)

    def _adopt_lr(self, gi: int, gt: Dict[str, Any]) -> Optional[Tensor]:
        group = self.param_groups[gi]
        alias, pub = self._lr_alias.get(gi), self._lr_pub.get(gi)
        new = group["lr"]
        if alias is None or pub is None:
            return None
        replaced = new is not alias
        if not replaced and not torch.compiler.is_compiling() and alias._version == self._lr_ver.get(gi):
            return None                                  # untouched since it was published: nothing to read
        # (under torch.compile the version counter cannot steer the trace: the tensor path below gives the same)
        if not isinstance(new, Tensor):
            try:
                v = float(new)
            except (TypeError, ValueError):
                raise TypeError(f"param group {gi}: lr must be a number or a tensor, got {new!r}") from None
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"param group {gi}: lr must be a finite number >= 0, got {new!r}")
        elif new.numel() != 1:
            raise ValueError(f"param group {gi}: lr must be a number or a one-element tensor, got a tensor of "
                             f"shape {tuple(new.shape)}")
        hp = gt["levels"][0]["hp"]
        lr_hp = hp["lr"]
        new_t = (new.detach().to(dtype=lr_hp.dtype, device=lr_hp.device) if isinstance(new, Tensor)
                 else torch.tensor(float(new), dtype=lr_hp.dtype, device=lr_hp.device)).reshape(())
        learned = self._group_learned(group)
        raw = ref.to_raw(self.kind, "lr", new_t.clamp_min(0)) if "lr" in learned else new_t
        valid = torch.isfinite(new_t) & (new_t >= 0)
        if replaced:
            adopt, lr_ok = valid, valid
        else:                                            # in place: only what differs from the value shown
            changed = new_t != pub.to(new_t.dtype)
            adopt, lr_ok = changed & valid, valid | ~changed
        ref.inplace(lr_hp).copy_(torch.where(adopt, raw, lr_hp))
        if replaced:
            self._publish_lr(gi)
        return lr_ok

    # ---------------------------------------------------------------- public read-out
    def hyperparameters(self, group: int = 0) -> Dict[str, Union[float, List[float]]]:
        """Current values of this level's hyperparameters for param group ``group`` (floats).

        ``"lr"`` is a list (one value per tensor, or per entry of the vector below) with ``per_tensor=True``.
        Reading them synchronises with the device; ``step()`` itself never does.
        """
        root = self._owner
        if root is None:
            vals = self._values_from(self._level_values)
            return {k: float(v) for k, v in vals.items()}
        if group >= len(root.param_groups):
            raise IndexError(f"no param group {group} (the optimizer has {len(root.param_groups)})")
        root._sync_group(group)
        gt = root._group_tower(group)
        spec = root._level_specs(group)[self._depth]
        vals = root._values_of(spec, gt["levels"][self._depth]["hp"])
        out: Dict[str, Union[float, List[float]]] = {}
        for name, t in vals.items():
            out[name] = t.tolist() if t.dim() else float(t)
        return out

    def backends(self) -> List[str]:
        """The backend each param group runs ("auto" resolved: "cpu", "cuda", "triton" or "reference")."""
        self._require_root("backends")
        return [self._group_backend(g) if g["params"] else self._backend for g in self.param_groups]

    @property
    def skipped_steps(self) -> int:
        """How many steps were skipped because of a non-finite gradient, hypergradient or hyperparameter."""
        root = self._owner
        if root is None or not root._is_root:
            return 0
        return int(root._tower()["skipped_steps"])

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self._values_from(self._level_values).items())}"
        for key in kinds.KINDS[self.kind].fixed:          # (SGD's nesterov, dampening) where set
            if self._level_values.get(key):
                head += f", {key}={self._level_values[key]}"
        if getattr(self, "_learn_request", None):
            head += f", learn={self._learn_request}"
        head += ")"
        if self.hyper is not None:
            head += " / " + repr(self.hyper)
        return head

    # ---------------------------------------------------------------- the step
    def _require_root(self, what: str) -> None:
        if not self._is_root:
            raise RuntimeError(f"{type(self).__name__}.{what}() is for the optimizer at level 0 of a tower "
                               f"(constructed with params); this one is a level of a tower")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One step of every level of the tower (see the module docstring). Returns the closure's loss."""
        self._require_root("step")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans, lr_oks = [], []
        # torch.amp.GradScaler's protocol for optimizers that handle scaling themselves
        # (_step_supports_amp_scaling): it sets `grad_scale` (the gradients are still scaled) and `found_inf`
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        programs = (self.__dict__.get("_programs") if grad_scale is None and found_inf is None
                    and not torch.compiler.is_compiling() else None)      # (a trace takes the general path)
        for gi, group in enumerate(self.param_groups):
            if group["params"]:
                lr_ok = self._sync_group(gi)
                if lr_ok is not None:
                    lr_oks.append(lr_ok)
                # the usual step of this group, where a program covers it (program.py); else the general plan
                prog = programs.get(gi) if programs else None
                prog = None if prog is None else prog[3]
                grads = None if prog is None else prog.take(self, gi, group)
                plans.append(self._collect(gi, group) if grads is None else
                             {"gi": gi, "program": prog, "grads": grads, "specs": prog.specs,
                              "backend": prog.backend})
                plans[-1]["lr_adopted"] = lr_ok is not None
        if not plans:
            return loss
        for plan in plans:
            plan["inv_scale"] = None
            if "program" in plan:       # (no scale, no transform: what a program covers)
                continue
            if grad_scale is not None and plan["grads"]:
                if plan["backend"].unscales:
                    # the GPU kernels unscale as they read (the gradients stay scaled, as with torch's fused
                    # optimizers): no pass of its own over the gradients
                    plan["inv_scale"] = torch.reciprocal(
                        grad_scale.to(device=plan["grads"][0].device, dtype=torch.float64)).reshape(1)
                else:            # the CPU kernels may keep the gradient tensor as the previous gradient
                    torch._foreach_div_(plan["grads"], grad_scale.to(plan["grads"][0].device))
            self._transform_grads(plan)
        scaler_ok = None if found_inf is None else (found_inf == 0)
        # a negative or non-finite tensor lr set in param_groups: the step is skipped
        extra_ok = [scaler_ok] if scaler_ok is not None else []
        extra_ok += lr_oks
        if not self._one_pass:
            # exact: pass A, the tower on scalars, then pass B with the new hyperparameters
            for plan in plans:
                if "program" in plan:
                    plan["ok"], plan["scratch"] = plan["program"].reduce(self, plan["grads"])
                elif not self._pass_a_and_tower(plan):
                    d0, finite = self._pass_a(plan)
                    self._plan_tower(plan, d0, finite)
            ok = _all([plan["ok"] for plan in plans] + extra_ok)
            for plan in plans:
                if "program" in plan:
                    plan["program"].finish(self, plan["grads"], plan["scratch"], ok)
                    continue
                self._commit_tower(plan, ok)
                self._pass_b(plan, ok)
                self._keep_used(plan, ok)
        else:
            # one pass: the gradients are read once for the skip decision; pass B updates with the current
            # hyperparameters and sums the hypergradient from the old state; the tower steps after it
            # the gradients are read once for the skip decision, unless GradScaler has made it already
            ok_g = _all(([scaler_ok] if scaler_ok is not None else [self._grads_finite(plan) for plan in plans])
                        + lr_oks)
            for plan in plans:
                res = self._pass_b(plan, ok_g)
                if res is not None:                       # None: the tower ran in pass B's op
                    self._plan_tower(plan, *res)
            ok = ok_g & _all([plan["ok"] for plan in plans])
            for plan in plans:
                self._keep_used(plan, ok_g)
                self._commit_tower(plan, ok)
        for plan in plans:
            # param_groups' lr tensor shows the value in use: refreshed where it may have changed (a learned lr,
            # or one adopted from param_groups this step)
            if "lr" in plan["specs"][0][2] or plan["lr_adopted"]:
                self._publish_lr(plan["gi"], plan["specs"][0])
        skipped = self._tower()["skipped_steps"]
        if all(plan["backend"].name == "cpu" for plan in plans) and not torch.compiler.is_compiling():
            if not bool(ok):       # the C++ kernels' verdict is on the host: a read, not two tensor ops
                skipped.add_(1)
        else:
            skipped.add_(~ok)
        return loss

    def _ensure_used(self, gt: Dict[str, Any], learned0: Sequence[str]) -> None:
        """Level 0's ``used`` values, made at the first step: the values of the last update, which its Jacobian is
        rebuilt with (one-pass mode updates before the tower moves them, and in exact mode param_groups edits
        (schedulers) may change them between two steps)."""
        if (self._one_pass or learned0) and "used" not in gt["levels"][0]:
            gt["levels"][0]["used"] = {k: v.clone() for k, v in gt["levels"][0]["hp"].items()}

    def _keep_used(self, plan, ok: Tensor) -> None:
        self._keep_used_of(plan["gi"], plan["specs"][0][2], plan["levels"][0], plan["backend"].name == "cpu", ok)

    def _keep_used_of(self, gi: int, learned0: Sequence[str], rec0: Dict[str, Any], on_host: bool,
                      ok: Tensor) -> None:
        """Level 0's values of this step's update (where it was taken): what the next step rebuilds its Jacobian
        with (docs/MATH.md §1.2-1.3). ``rec0``: level 0's record; ``on_host``: the verdict ``ok`` is the C++
        kernels', on the host."""
        tracing = torch.compiler.is_compiling()     # (a traced step keeps nothing on the host)
        pending = None if tracing else self.__dict__.setdefault("_pending_vals", {}).pop(gi, None)
        kept = {} if tracing else self.__dict__.setdefault("_used_vals", {})
        if not learned0:
            kept.pop(gi, None)
            return
        used = rec0["used"]
        hp = rec0["hp"]
        if on_host and not tracing:
            # the C++ kernels' verdict is on the host: one multi-tensor copy when the step was taken (the
            # device backends never read it, also under the Triton interpreter on CPU tensors)
            if bool(ok):            # (eager: no view needed for the writes, see ref.inplace)
                ref.copy_all([used[name] for name in hp], list(hp.values()))
                if pending is not None and pending[0] is hp:
                    # the values pass B computed from these raw values are now those of ``used``: a value computed
                    # by tensor ops (a parametrised one) is kept, one that is the raw tensor itself is ``used``'s
                    vals = {name: (v if v is not hp[name] else used[name]) for name, v in pending[1].items()}
                    kept[gi] = (used, vals, tuple(t._version for t in used.values()))
                else:
                    kept.pop(gi, None)
            return
        kept.pop(gi, None)
        for name, t in hp.items():
            ref.inplace(used[name]).copy_(torch.where(ok, t, used[name]))

    def _used_values(self, gi: int, spec0, used: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``_values_of(spec0, used)``: the values of level 0's last update, which its Jacobian is rebuilt with. Those
        that are parametrised (sigma of a learned beta: tensor ops) were computed by that update's pass B from the
        raw values ``_keep_used`` then copied into ``used``: taken from there while ``used`` is the same dict and its
        tensors have not been written since (their version counters: a traced step's write moves them too)."""
        hit = None if torch.compiler.is_compiling() else self.__dict__.get("_used_vals", {}).get(gi)
        if hit is not None and hit[0] is used and hit[2] == tuple(t._version for t in used.values()):
            return hit[1]
        return self._values_of(spec0, used)

    def _group_impl(self, group: Dict[str, Any]) -> "ops.backends.Backend":
        """The backend object that runs param group ``group`` (see ``_group_backend``)."""
        return ops.backends.get(self._group_backend(group))

    def _group_backend(self, group: Dict[str, Any]) -> str:
        dev = group["params"][0].device
        if self._backend == "auto":
            return ops.auto_backend(dev)          # warns once when it falls back to the reference
        if self._backend == "triton" and dev.type != "cuda" and not (dev.type == "cpu"
                                                                      and ops._triton.interpreting()):
            raise ValueError(f"backend='triton' runs on CUDA tensors (and on CPU tensors under the Triton "
                             f"interpreter, TRITON_INTERPRET=1); this param group is on {dev}")
        if self._backend in ("cpu", "cuda") and dev.type != self._backend:
            raise ValueError(f"backend={self._backend!r} runs on {self._backend.upper()} tensors; this param group "
                             f"is on {dev}")
        return self._backend

    def _fresh_state(self, p: Tensor, cfg: dict, learned: Sequence[str]) -> Dict[str, Tensor]:
        """A parameter's state as at its first step, in its math dtype (a group may mix float32 and float64
        parameters; the kernels run each dtype with its own math type)."""
        return ref.KINDS[self.kind][0](p.detach().to(ref.math_dtype(p.dtype)), cfg, self._kernel_learned(learned))

    def _param_state(self, p: Tensor, cfg0: dict, learned0: Sequence[str]) -> Dict[str, Any]:
        """The state of parameter ``p``, created on first use. For a DTensor parameter (FSDP2) the
        element-wise state is a DTensor sharded like the parameter, so checkpoints (DCP) carry the shards."""
        st = self.state[p]
        if not st:
            st.update(self._fresh_state(p, cfg0, learned0))
            st["moved"] = torch.zeros((), dtype=torch.bool, device=p.device)
            if _is_dtensor(p) and "prev_grad" in st:
                st["prev_grad_copy"] = True       # the state keeps its own (sharded) copy of the gradient
        return st

    def init_state(self) -> None:
        """Create every parameter's state and every level's hyperparameters now, as before a first step
        (nothing is updated). Loading a checkpoint with torch.distributed.checkpoint needs the optimizer's
        state_dict as a template: ``opt.init_state(); sd = opt.state_dict(); dcp.load(sd, ...);
        opt.load_state_dict(sd)``."""
        self._require_root("init_state")
        with torch.no_grad():
            for gi, group in enumerate(self.param_groups):
                if not group["params"]:
                    continue
                specs = self._level_specs(gi)
                _, _, learned0, _, cfg0 = specs[0]
                gt = self._group_tower(gi)
                for p in group["params"]:
                    self._param_state(p, cfg0, learned0)
                self._ensure_used(gt, learned0)

    def _collect(self, gi: int, group: Dict[str, Any]) -> Dict[str, Any]:
        """The tensors of this step (those with a gradient), their state (created on first use), the specs.
        DTensor parameters (FSDP2) contribute their local shards; the kernels see plain tensors."""
        specs = self._level_specs(gi)
        gt = self._group_tower(gi)
        _, _, learned0, per0, cfg0 = specs[0]
        plan = self._collect_again(gi, group, specs, gt)
        if plan is not None:
            return plan
        dt = self._hyper_dtype(group)
        params, grads, states, idle = [], [], [], []
        index = []                # per-tensor lrs are indexed by position in the group: the tensors with a gradient
        mesh = None
        DT = _dtensor_type()
        state = self.state
        for i, p in enumerate(group["params"]):
            g = p.grad
            if DT is not None and isinstance(p, DT):
                if p.device_mesh.ndim != 1:
                    raise ValueError(f"{type(self).__name__} supports DTensor parameters on 1-D device meshes "
                                     f"(FSDP2's fully_shard); got a {p.device_mesh.ndim}-D mesh")
                mesh = p.device_mesh
            elif mesh is not None:
                raise ValueError(f"param group {gi} mixes DTensor and plain parameters; shard them all or none")
            if g is None:
                st = state[p]
                if st:
                    idle.append(st)
                continue
            if g.is_sparse:
                raise ValueError(f"{type(self).__name__} does not support sparse gradients "
                                 f"(parameter of shape {tuple(p.shape)}); use dense gradients")
            st = state.get(p) or self._param_state(p, cfg0, learned0)
            index.append(i)
            if mesh is not None:
                params.append(p.detach().to_local())
                grads.append(g.to_local())
                states.append({k: (v.to_local() if _is_dtensor(v) else v) for k, v in st.items()})
            else:
                params.append(p)
                grads.append(g)
                states.append(st)
        self._ensure_used(gt, learned0)
        plan = {"gi": gi, "specs": specs, "levels": gt["levels"], "params": params, "grads": grads,
                "states": states, "idle": idle, "index": index, "n": len(group["params"]), "dtype": dt,
                "device": group["params"][0].device, "backend": self._group_impl(group),
                "group": None if mesh is None else mesh.get_group()}
        cache = self.__dict__.setdefault("_collected", {})
        if mesh is None and len(params) == plan["n"] and not torch.compiler.is_compiling():
            # every tensor had a gradient and state: what the next step may take again (``_collect_again``), with
            # the step counts and moved flags packed into a vector each (one op a step for each, not one a tensor)
            # (a copy before the step adds to it, without the gradients: the cache must not keep them alive)
            states = plan["states"] = packed.pack(states) or states
            cache[gi] = (group["params"], tuple(params), self.state, states,
                         [p.dtype for p in params], plan["device"], dict(plan, grads=None))
            self._program_for(gi, plan, cache[gi])
        else:
            cache.pop(gi, None)
            self.__dict__.get("_programs", {}).pop(gi, None)
        return plan

    def _program_for(self, gi: int, plan: Dict[str, Any], hit: tuple) -> None:
        """The step program (program.py) of group ``gi`` for the kept plan ``hit`` with this step's specs and levels:
        made once for them (None where no program covers the group), so the steps after a general one, which a
        program handed back (a param_groups edit makes new specs), run as a program again."""
        progs = self.__dict__.setdefault("_programs", {})
        cur = progs.get(gi)
        if cur is not None and cur[0] is hit and cur[1] is plan["specs"] and cur[2] is plan["levels"]:
            return
        progs[gi] = (hit, plan["specs"], plan["levels"],
                     StepProgram.build(self, plan, hit) if _PROGRAMS else None)

    def _collect_again(self, gi: int, group: Dict[str, Any], specs, gt) -> Optional[Dict[str, Any]]:
        """``_collect``'s plan for the usual step: the same parameters as last time (same objects, devices and
        dtypes), each with a dense gradient and the same state dict, the same optimizer state. Only the gradients
        are new; the lists and what was derived from them are taken again. None: ``_collect`` builds it."""
        hit = self.__dict__.get("_collected", {}).get(gi)
        grads = None if hit is None else self._grads_again(gi, group, hit)
        if grads is None:
            return None
        _, ps, _, states, _, _, last = hit
        self._ensure_used(gt, specs[0][2])
        plan = dict(last)
        plan.update(specs=specs, levels=gt["levels"], params=list(ps), grads=grads, states=states.copy())
        self._program_for(gi, plan, hit)
        return plan

    def _grads_again(self, gi: int, group: Dict[str, Any], hit: tuple) -> Optional[List[Tensor]]:
        """The gradients of this step when it repeats the plan ``hit`` that ``_collect`` kept: the same parameters
        (same objects, devices and dtypes), each with a dense gradient and the same state dict (still holding its
        packed views), the same optimizer state. None otherwise, and always under a trace (which builds its plan
        afresh)."""
        if torch.compiler.is_compiling():
            return None
        ps_list, ps, state_obj, states, dtypes, dev, _ = hit
        params = group["params"]
        if not (params is ps_list and state_obj is self.state and len(params) == len(ps)
                and all(map(operator.is_, params, ps))):
            return None
        grads = [p.grad for p in ps]
        get = state_obj.get
        if not (all(g is not None and not g.is_sparse for g in grads)
                and all(map(operator.is_, map(get, ps), states)) and all(states)   # (one emptied: made again)
                and [p.dtype for p in ps] == dtypes and ps[0].device == dev
                and (not isinstance(states, packed.PackedStates) or states.intact())):   # (packed again)
            return None
        return grads

    @staticmethod
    def _all_reduce(plan, d0: Dict[str, Tensor], finite: Tensor, names: Sequence[str]):
        """Sharded parameters (FSDP2): each rank summed over its shards; one all-reduce of the vector of
        partial sums (and of the non-finite count) per param group makes them the whole model's."""
        if plan["group"] is None:
            return d0, finite
        import torch.distributed as dist
        parts = [d0[name].reshape(-1) for name in names]
        flat = torch.cat(parts + [(~finite).to(plan["dtype"]).reshape(1)])
        dist.all_reduce(flat, group=plan["group"])
        out, pos = {}, 0
        for name, part in zip(names, parts):
            out[name] = flat[pos:pos + part.numel()].reshape(d0[name].shape)
            pos += part.numel()
        return out, flat[-1] == 0

    def _pass_a(self, plan) -> Tuple[Dict[str, Tensor], Tensor]:
        spec0 = plan["specs"][0]
        _, _, learned0, per0, cfg0 = spec0
        if not plan["params"]:
            return self._zero_deltas(plan, learned0, per0), torch.ones((), dtype=torch.bool, device=plan["device"])
        if not learned0:                     # nothing learned: pass A is the skip decision's read of the gradients
            return {}, self._grads_finite(plan)
        # the Jacobian of the last update, with the values it used (param_groups edits may have changed them)
        hp_rows = self._rows(plan["levels"][0]["used"], plan["index"], per0)
        vals = self._used_values(plan["gi"], spec0, hp_rows)
        d0, finite = plan["backend"].reduce(self.kind, cfg0, self._kernel_learned(learned0), per0, plan["grads"],
                                            plan["states"],
                                            packed.moved_of(plan["states"]), vals, hp_rows,
                                            inv_scale=plan.get("inv_scale"))
        d0 = self._decoupled_delta(plan, d0, vals)
        return self._all_reduce(plan, self._scatter(plan, d0, per0), finite, learned0)

    @staticmethod
    def _may_fuse_tower(plan) -> bool:
        """The pass that makes level 0's hypergradient may carry the levels above (the backend decides whether
        it can): there are levels above, the partial sums need no all-reduce between the two (FSDP), and no
        term is added to them in between (decoupled weight decay with a learned lr)."""
        return (plan["group"] is None and len(plan["specs"]) >= 2 and bool(plan["grads"])
                and "gx" not in plan)

    # ---------------------------------------------------------------- torch's gradient transforms
    # maximize and L2 weight decay make the gradient the optimizer runs on, g~ = (-g if maximize) + wd * x: every
    # formula then holds with g~ for g (docs/MATH.md §4.6), the hypergradients sum g~_t * J and the kept previous
    # gradient is g~. A pure maximize on a backend that scales gradients as it reads them is folded into that
    # factor (no pass of its own); otherwise g~ is made by two multi-tensor ops into new tensors (the user's
    # gradients are left as they are). Decoupled decay (AdamW) scales the weights by 1 - lr wd inside pass B, before
    # the kind's step (``_decay_amount``), and adds its term to the lr hypergradient (``_decoupled_delta``).
    def _transform_grads(self, plan) -> None:
        cfg0 = plan["specs"][0][4]
        maximize, wd, dec = cfg0["maximize"], cfg0["weight_decay"], cfg0["decoupled_weight_decay"]
        if not plan["grads"]:
            return
        coupled = wd if not dec else 0.0
        inv = plan.get("inv_scale")
        if maximize and not coupled and inv is not None:     # the sign rides in the kernels' 1 / scale
            plan["inv_scale"] = -inv
        elif maximize or coupled:
            grads = plan["grads"]
            if inv is not None:
                grads = torch._foreach_mul(grads, inv.reshape(()))
                plan["inv_scale"] = None
            if maximize:
                grads = torch._foreach_neg(grads)
            if coupled:
                grads = torch._foreach_add(grads, plan["params"], alpha=coupled)
            plan["grads"] = grads
        learned0 = plan["specs"][0][2]
        if dec and ((wd and "lr" in learned0) or WD in learned0):
            # sum(g~ * x) per tensor before anything moves x, for the decoupled decay's lr (and decay) hypergradient
            plan["gx"] = self._grad_dot_weights(plan)

    @staticmethod
    def _grad_dot_weights(plan) -> Tensor:
        """sum(g~ * x) per tensor (float64, deterministic), 0 for a tensor that did not move at its last step. The
        gradients may still carry GradScaler's scale (the kernels of cuda/triton unscale as they read): so does the
        dot product, and it is unscaled the same way."""
        gx = ops.multi_tensor_dot(plan["grads"], plan["params"])
        inv = plan.get("inv_scale")
        if inv is not None:
            gx = gx * inv.reshape(()).to(gx.dtype)
        moved = packed.moved_of(plan["states"])
        return torch.where(moved if isinstance(moved, Tensor) else torch.stack(moved), gx, torch.zeros_like(gx))

    def _decoupled_delta(self, plan, d0: Dict[str, Tensor], used: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The decoupled decay's terms (AdamW, Lion; docs/MATH.md §4.6). With x' = x (1 - lr wd) - lr d and the
        kind's own delta_k = sum(g~ J_k) = -sum(g~ d), x' the current weights and lr, wd the values the last update
        used (``used``; lr per tensor with per-tensor lrs):
            J_lr = -(d + wd x) = -(d + wd x') / (1 - lr wd)  ->  delta_lr = (delta_k - wd sum(g~ x')) / (1 - lr wd)
            J_wd = -lr x = -lr (x' + lr d) / (1 - lr wd)     ->  delta_wd = -lr (sum(g~ x') - lr delta_k) / (1 - lr wd)
        (a learned wd: the kernels then sum delta_k for lr whether or not lr is learned)."""
        gx = plan.get("gx")
        if gx is None or "lr" not in d0:
            return d0
        spec0 = plan["specs"][0]
        learned = spec0[2]
        wd = used[WD] if WD in learned else spec0[4]["weight_decay"]
        lr = used["lr"]
        d = d0["lr"]
        term = gx.to(d.dtype) if d.dim() else gx.sum().to(d.dtype)
        out = dict(d0)
        den = 1.0 - lr * wd
        # at lr wd = 1 the last update erased x (x' = -lr d): x, and the decay's terms, cannot be rebuilt; the
        # lr hypergradient keeps the kind's own term there and the decay's is 0
        ok = den != 0
        safe = torch.where(ok, den, torch.ones_like(den))
        if "lr" in learned:
            out["lr"] = torch.where(ok, (d - wd * term) / safe, d)
        if WD in learned:
            dwd = torch.where(ok, -lr * (term - lr * d) / safe, torch.zeros_like(d))
            out[WD] = (dwd.sum() if dwd.dim() else dwd).to(d.dtype)
        if "lr" not in learned:
            del out["lr"]                     # the kind's term, summed for the decay's: not a hypergradient here
        return out

    def _decay_value(self, spec0, hp: Dict[str, Tensor]):
        """The decoupled decay's value: the learned one (kept >= 0 by the commit) or the configured number."""
        return hp[WD] if WD in spec0[2] else spec0[4]["weight_decay"]

    @staticmethod
    def _exact_fixed(spec0, vals: Dict[str, Any]) -> Dict[str, Any]:
        """The update's values with every fixed hyperparameter but the lr as the number the group gives (a Python
        float, exact) rather than its tensor (in the group's hyperparameter dtype): the backends then form 1 - beta,
        1 - alpha and Adam's bias corrections 1 - beta^t from the exact number in float64, as torch does. From a
        float32 0.99, 1 - alpha is off by 1e-6 of its value; RMSprop, which has no bias correction to absorb it,
        drifted from torch's float32 trajectory by 4x torch's own rounding error. Not for a value given as a tensor
        (reading it would synchronise with its device)."""
        lv, given, learned = spec0[0], spec0[1], spec0[2]
        out = None
        for name in lv.hyper_names:
            if (name != "lr" and name not in learned and name in vals
                    and isinstance(given.get(name), numbers.Real) and not isinstance(given[name], bool)):
                out = dict(vals) if out is None else out
                out[name] = float(given[name])
        return vals if out is None else out

    def _update_values(self, gi: int, spec0, rows: Dict[str, Tensor]) -> Dict[str, Any]:
        """The values pass B updates with: ``_exact_fixed(spec0, _values_of(spec0, rows))``. Where no learned value
        is parametrised, these are the tensors of ``rows`` themselves and the group's numbers: kept while the spec
        and ``rows`` are the same objects (a level's dict of tensors is made once, its tensors change in place; a
        loaded checkpoint brings new dicts, an edited param group a new spec)."""
        lv, learned = spec0[0], spec0[2]
        if torch.compiler.is_compiling():       # (a trace computes them: nothing kept across traced steps)
            return self._exact_fixed(spec0, self._values_of(spec0, rows))
        if any(kinds.KINDS[lv.kind].parametrisation(n) != kinds.IDENTITY for n in learned if n != WD):
            vals = self._values_of(spec0, rows)
            self.__dict__.setdefault("_pending_vals", {})[gi] = (rows, vals)     # for ``_keep_used``
            return self._exact_fixed(spec0, vals)
        kept = self.__dict__.setdefault("_update_vals", {})
        hit = kept.get(gi)
        if hit is not None and hit[0] is spec0 and hit[1] is rows:
            return hit[2]
        vals = self._exact_fixed(spec0, self._values_of(spec0, rows))
        kept[gi] = (spec0, rows, vals)
        return vals

    def _decay_amount(self, spec0, vals: Dict[str, Tensor]) -> Optional[Tensor]:
        """lr * weight_decay of the decoupled weight decay (AdamW, Lion), with the values ``vals`` this step's update
        uses (one value, or one per tensor with per-tensor lrs); None without one. Pass B applies it: x is
        multiplied by 1 minus it before the kind's step, in the same pass, where the step is taken."""
        cfg0 = spec0[4]
        if not (cfg0["decoupled_weight_decay"] and (cfg0["weight_decay"] or WD in spec0[2])):
            return None
        return vals["lr"] * self._decay_value(spec0, vals)

    def _pass_a_and_tower(self, plan) -> bool:
        """Pass A and the levels above as one call where the backend can fuse them (the compiled ops: on CUDA
        pass A's finishing kernel runs the tower). Returns False to leave it to ``_pass_a`` and ``_plan_tower``."""
        if not self._may_fuse_tower(plan):
            return False
        spec0 = plan["specs"][0]
        _, _, learned0, per0, cfg0 = spec0
        hp_rows = plan["levels"][0]["used"]        # every tensor has a gradient where the lr is per tensor
        res = plan["backend"].reduce_tower(self.kind, cfg0, self._kernel_learned(learned0), per0, plan["grads"],
                                           plan["states"],
                                           packed.moved_of(plan["states"]),
                                           self._used_values(plan["gi"], spec0, hp_rows),
                                           hp_rows, plan["levels"], plan["specs"], plan["n"],
                                           inv_scale=plan.get("inv_scale"))
        if res is None:
            return False
        plan["tower_commit"], plan["ok"] = res
        return True

    def _pass_b(self, plan, ok: Tensor):
        """Level 0's update with its current hyperparameters (exact mode: already the new ones). In one-pass
        mode also returns this step's level-0 hypergradients, from the Jacobian of the last update."""
        spec0 = plan["specs"][0]
        _, _, learned0, per0, cfg0 = spec0
        rec = plan["levels"][0]
        result = None
        host = plan["backend"].name == "cpu" and not torch.compiler.is_compiling()   # ok may be read (CPU)
        if plan["params"]:
            rows = self._rows(rec["hp"], plan["index"], per0)
            vals = self._update_values(plan["gi"], spec0, rows)
            decay = self._decay_amount(spec0, vals)
            jac = None
            if self._one_pass:
                used = self._rows(rec["used"], plan["index"], per0)
                jac = (self._used_values(plan["gi"], spec0, used), used, packed.moved_of(plan["states"]))
                used_vals = jac[0]
            fused = None
            if jac is not None and self._may_fuse_tower(plan):   # the levels above in the same op (launch)
                fused = plan["backend"].update_tower(self.kind, cfg0, self._kernel_learned(learned0), per0,
                                                     plan["params"], plan["grads"],
                                                     plan["states"], vals, ok, rows, jac,
                                                     plan["levels"], plan["specs"], plan["n"],
                                                     inv_scale=plan.get("inv_scale"), decay=decay)
            if fused is not None:
                plan["tower_commit"], plan["ok"] = fused
            else:
                result = plan["backend"].update(self.kind, cfg0, self._kernel_learned(learned0), per0,
                                                plan["params"], plan["grads"],
                                                plan["states"], vals, ok, raw=rows, jac=jac,
                                                inv_scale=plan.get("inv_scale"), decay=decay)
            # one multi-tensor op each, not one per tensor: the step's launch count must not grow with the model
            if learned0:              # (the flags say whether a tensor's last update has a Jacobian)
                _flags_set_where(packed.moved_of(plan["states"]), ok, True, host=host)       # moved |= ok
        if plan["idle"] and learned0:   # no gradient this step: did not move, so no Jacobian next step
            _flags_set_where([st["moved"] for st in plan["idle"]], ok, False, host=host)        # moved &= ~ok
        if not self._one_pass or "tower_commit" in plan:      # exact mode, or the tower already planned
            return None
        if result is None:
            return self._zero_deltas(plan, learned0, per0), torch.ones((), dtype=torch.bool, device=plan["device"])
        d0, finite = result
        d0 = self._decoupled_delta(plan, d0, used_vals)
        return self._all_reduce(plan, self._scatter(plan, d0, per0), finite, learned0)

    def _grads_finite(self, plan) -> Tensor:
        finite = (torch.ones((), dtype=torch.bool, device=plan["device"]) if not plan["grads"]
                  else plan["backend"].finite(plan["grads"]))
        return self._all_reduce(plan, {}, finite, ())[1]

    def _zero_deltas(self, plan, learned, per):
        dt, dev = plan["dtype"], plan["device"]
        return {name: torch.zeros(plan["n"], dtype=dt, device=dev) if (name == "lr" and per)
                else torch.zeros((), dtype=dt, device=dev) for name in learned}

    @staticmethod
    def _scatter(plan, d0: Dict[str, Tensor], per: bool) -> Dict[str, Tensor]:
        """Per-tensor lr hypergradients of the tensors with a gradient, back into the group's full vector."""
        if per and "lr" in d0 and len(plan["index"]) != plan["n"]:
            full = torch.zeros(plan["n"], dtype=plan["dtype"], device=plan["device"])
            if plan["index"]:
                full[plan["index"]] = d0["lr"]
            d0 = dict(d0)
            d0["lr"] = full
        return d0

    def _plan_tower(self, plan, d0: Dict[str, Tensor], finite: Tensor) -> None:
        """Hypergradients of the levels above (bottom-up) and their tentative updates (top-down), on the group's
        backend; ``_commit_tower`` writes them once the step's verdict is known."""
        specs = plan["specs"]
        if len(specs) == 1:                   # no level above: the verdict is level 0's
            plan.update(tower_commit=None, ok=finite)
            return
        plan["tower_commit"], plan["ok"] = plan["backend"].tower_plan(
            plan["levels"], specs, ref._flatten(d0, specs[0][2]), finite)

    def _commit_tower(self, plan: Dict[str, Any], ok: Tensor) -> None:
        if plan["tower_commit"] is not None:
            plan["tower_commit"](ok)
            if WD in plan["specs"][0][2]:         # a learned decay stays >= 0 (projected: clamped at 0)
                ref.inplace(plan["levels"][0]["hp"][WD]).clamp_(min=0)

    # ---------------------------------------------------------------- small helpers
    @staticmethod
    def _rows(hp: Dict[str, Tensor], index: List[int], per_tensor: bool) -> Dict[str, Tensor]:
        """A level-0 dict of values for the tensors ``index`` of this step: ``hp`` itself, unless per-tensor lrs are
        picked for a step that some tensors sit out (the same dict from step to step is what the value caches key
        on: ``_update_values``, ``_used_values``)."""
        if not per_tensor or "lr" not in hp or len(index) == hp["lr"].numel():
            return hp
        out = dict(hp)
        out["lr"] = hp["lr"][index]
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's. With ``set_to_none=False`` a gradient tensor that the state still holds as the previous
        gradient (the "cpu" backend keeps it instead of copying it) is copied first, so zeroing it in place
        loses nothing; that tensor's gradient is copied at every step from then on."""
        self._require_root("zero_grad")
        if not set_to_none:
            for group in self.param_groups:
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and p.grad is not None and st.get("prev_grad") is p.grad:
                        st["prev_grad"] = p.grad.detach().clone()
                        st["prev_grad_copy"] = True
        super().zero_grad(set_to_none)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """torch's optimizer state dict. Every level's hyperparameters and state ride in the state of the first
        parameter, under the key "hyperfused" (its keys are parameter indices only, as the checkpoint helpers
        of torch.distributed.checkpoint require)."""
        self._require_root("state_dict")
        sd = super().state_dict()
        tower = sd["state"].pop(_TOWER_KEY, None)
        if tower is not None:
            sd["state"][0] = dict(sd["state"].get(0, {}), **{_TOWER_KEY: tower})
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore every level. The checkpoint is checked against this optimizer first (kind, tower, learned
        sets, per-tensor lrs, shapes, dtypes, finite values); one that does not fit is refused with what differs,
        and the optimizer is left exactly as it was. The given dict is copied, never aliased; state keeps its
        saved dtypes. An lr edited in the checkpoint's param_groups is adopted, as torch would use it."""
        self._require_root("load_state_dict")
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("load_state_dict: expected an optimizer state dict with 'state' and 'param_groups'")
        state_dict = copy.deepcopy(state_dict)
        saved_state = dict(state_dict["state"])
        # the checkpoint's keys of the parameters, in order: indices, or names (torch.distributed.checkpoint)
        saved_keys = [k for g in state_dict["param_groups"] for k in g.get("params", [])]
        tower = saved_state.pop(_TOWER_KEY, None)             # checkpoints written before it moved
        first = saved_state.get(saved_keys[0]) if saved_keys else None
        if isinstance(first, dict) and _TOWER_KEY in first:
            first = dict(first)
            tower = first.pop(_TOWER_KEY)
            if first:
                saved_state[saved_keys[0]] = first
            else:
                del saved_state[saved_keys[0]]
        state_dict["state"] = saved_state
        before = (self.state, self.param_groups, dict(self._lr_alias), dict(self._lr_pub), dict(self._seen),
                  dict(self._lr_ver))
        try:
            super().load_state_dict(state_dict)
            # torch casts float state to the parameter's dtype; ours keeps float32 state for reduced precision
            index_to_param = [p for g in self.param_groups for p in g["params"]]
            key_to_param = dict(zip(saved_keys, index_to_param))
            for key, saved in saved_state.items():
                p = key_to_param.get(key)
                if p is not None and isinstance(saved, dict):
                    for name, val in saved.items():
                        if isinstance(val, Tensor):
                            self.state[p][name] = val.to(device=p.device)
            if tower is not None:
                dev = index_to_param[0].device if index_to_param else torch.device("cpu")
                tower = _to_device(tower, dev)
                # checkpoints written by torch.save may turn int keys into ints already; normalise
                tower["groups"] = {int(k): v for k, v in tower["groups"].items()}
                self.state[_TOWER_KEY] = tower
            self._check_loaded(before[1], tower is not None)
            self._adopt_loaded(before[1])
        except Exception:
            self.state, self.param_groups = before[0], before[1]
            self._lr_alias, self._lr_pub, self._seen, self._lr_ver = before[2], before[3], before[4], before[5]
            raise

    def _check_loaded(self, groups_before: List[Dict[str, Any]], has_tower: bool) -> None:
        """Raise ValueError naming what differs between the loaded state and this optimizer's configuration."""
        name = type(self).__name__
        for gi, (g, old) in enumerate(zip(self.param_groups, groups_before)):
            for k in self.defaults:
                if k not in g and (k in self._torch_only or k in self._NO_EFFECT or k in _TRANSFORM_KEYS):
                    g[k] = copy.deepcopy(self.defaults[k])    # a checkpoint written before the option existed
                if k not in g:
                    raise ValueError(f"{name}.load_state_dict: param group {gi} of the checkpoint has no {k!r}: it "
                                     f"was written by another optimizer (keys: {sorted(k for k in g if k != 'params')})")
            if g.get("learn") is None and old.get("learn") is not None and g["params"]:
                g["learn"] = self._group_learned(g)      # a checkpoint that left the default learned set implicit
            for k in self._STRUCTURAL:
                if not _same(g.get(k), old.get(k)):
                    raise ValueError(f"{name}.load_state_dict: param group {gi}: the checkpoint has {k}="
                                     f"{g.get(k)!r}, this optimizer {k}={old.get(k)!r}")
        per_param = [p for g in self.param_groups for p in g["params"] if self.state.get(p)]
        if not has_tower:
            if per_param:
                raise ValueError(f"{name}.load_state_dict: the checkpoint holds per-parameter state but no "
                                 f"hyperfused tower state: it was written by another optimizer (torch.optim?)")
            return
        # the tower this optimizer would make now, from its own configuration (on a scratch state)
        loaded = self.state
        self.state = collections.defaultdict(dict)
        try:
            template = {gi: self._group_tower(gi) for gi, g in enumerate(self.param_groups) if g["params"]}
        finally:
            self.state = loaded
        got = loaded[_TOWER_KEY].get("groups", {})
        if set(got) != set(template):
            raise ValueError(f"{name}.load_state_dict: the checkpoint's tower has param groups {sorted(got)}, "
                             f"this optimizer {sorted(template)}")
        sk = loaded[_TOWER_KEY].get("skipped_steps")
        if not isinstance(sk, Tensor) or sk.dim() != 0:
            raise ValueError(f"{name}.load_state_dict: the checkpoint's tower has no skipped_steps counter")
        for gi, want in template.items():
            have = got[gi].get("levels") if isinstance(got[gi], dict) else None
            if not isinstance(have, list) or len(have) != len(want["levels"]):
                n = len(have) if isinstance(have, list) else "no"
                raise ValueError(f"{name}.load_state_dict: param group {gi}: the checkpoint's tower has {n} levels, "
                                 f"this optimizer {len(want['levels'])} (height {len(want['levels']) - 1})")
            for k, (h, w) in enumerate(zip(have, want["levels"])):
                if "fixed" in w and isinstance(h, dict):
                    if "fixed" not in h:       # a checkpoint written before levels recorded them: cannot be checked
                        h["fixed"] = {key: t.clone() for key, t in w["fixed"].items()}
                    for key, t in w["fixed"].items():
                        v = h["fixed"].get(key) if isinstance(h["fixed"], dict) else None
                        if not isinstance(v, Tensor) or v.numel() != 1 or float(v) != float(t):
                            shown = float(v) if isinstance(v, Tensor) and v.numel() == 1 else v
                            raise ValueError(f"{name}.load_state_dict: param group {gi}, level {k}: the checkpoint "
                                             f"has {key}={shown!r}, this optimizer {key}={float(t)!r} (fixed once the "
                                             f"optimizer exists: it decides the level's state and formulas)")
                if k == 0 and isinstance(h, dict) and "used" in h:     # the last update's values
                    _match_tree(h["used"], w["hp"], f"param group {gi}, level 0, 'used'", name)
                    h = {key: v for key, v in h.items() if key != "used"}
                _match_tree(h, w, f"param group {gi}, level {k}", name)
        for gi, g in enumerate(self.param_groups):
            if not g["params"]:
                continue
            _, _, learned0, _, cfg0 = self._level_specs(gi)[0]
            for i, p in enumerate(g["params"]):
                st = self.state.get(p)
                if not st:
                    continue
                shape = tuple(p.shape)
                want = ref.KINDS[self.kind][0](torch.empty(shape, dtype=ref.math_dtype(p.dtype), device="meta"),
                                               cfg0, learned0)
                want["moved"] = torch.empty((), dtype=torch.bool, device="meta")
                missing = [k for k in want if k not in st]
                if missing:
                    raise ValueError(f"{name}.load_state_dict: the state of parameter {i} (shape {shape}) lacks "
                                     f"{missing} (has {sorted(k for k in st)}): another kind or configuration")
                for k, w in want.items():
                    _match_tensor(st[k], w, f"parameter {i} (shape {shape}), {k!r}", name)

    def _adopt_loaded(self, groups_before: List[Dict[str, Any]]) -> None:
        """After a load: the aliases shown in param_groups, an lr edited in the checkpoint, fixed values."""
        self._lr_alias, self._lr_pub, self._seen, self._lr_ver = {}, {}, {}, {}
        for gi, group in enumerate(self.param_groups):
            if not group["params"]:
                continue
            saved_lr = group["lr"]
            spec = self._level_specs(gi)[0]
            gt = self._group_tower(gi)
            hp = gt["levels"][0]["hp"]
            lr = self._value_of(spec, hp, "lr")
            lr = lr.mean() if lr.dim() else lr
            group["lr"] = float(lr)           # _publish_lr makes the alias; the value is compared below
            self._publish_lr(gi, spec)
            try:
                edited = float(saved_lr) != float(lr)
            except (TypeError, ValueError):
                raise ValueError(f"load_state_dict: param group {gi}: lr must be a number, got {saved_lr!r}") from None
            if edited:                        # adopted at the next step, as a replaced lr is
                group["lr"] = saved_lr
            # the values the level above does not learn are the param group's (torch reads them from there)
            learned = self._group_learned(group)
            vals = self._values_from(dict(group, lr=0.0))
            self._refuse_torch_only(f"load_state_dict: param group {gi}", group)
            self._check_values(vals, learned, f"load_state_dict: param group {gi}")
            self._group_cfg(group, vals, f"load_state_dict: param group {gi}")
            for name in self.hyper_names:
                if name != "lr" and name not in learned and name in hp:
                    hp[name].fill_(float(vals[name]))
            self._seen[gi] = self._snapshot(group)

    # ---------------------------------------------------------------- copies
    # what a step keeps from the last one to save host time (rebuilt by the next step): not part of a copy
    _STEP_CACHES = ("_collected", "_programs", "_update_vals", "_used_vals", "_pending_vals")

    def __getstate__(self) -> Dict[str, Any]:
        """Everything but the step caches (torch's keeps defaults, state and param_groups only): copy.deepcopy and
        pickle give an optimizer that continues bitwise as the original does."""
        return {k: v for k, v in self.__dict__.items() if k not in self._STEP_CACHES}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)


_DTENSOR: List[Any] = []


def _dtensor_type():
    """torch's DTensor class, or None (torch without distributed); resolved once: the import machinery costs
    microseconds per call."""
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:
            DTensor = None
        _DTENSOR.append(DTensor)
    return _DTENSOR[0]


def _is_dtensor(t) -> bool:
    DT = _dtensor_type()
    return DT is not None and isinstance(t, DT)


def _flags_set_where(flags: Union[Tensor, List[Tensor]], ok: Tensor, value: bool, device_path: Optional[bool] = None,
                     host: bool = False) -> None:
    """Set the 0-dim bool tensors ``flags`` to ``value`` where the 0-dim bool ``ok`` is true, in a number of ops
    that does not grow with the flags. On CPU one multi-tensor maximum/minimum (a loop in C++). Elsewhere torch's
    multi-tensor ops take one kernel per bool tensor (or refuse bool, in older torch): the flags are stacked,
    combined and copied back (three launches). ``device_path`` forces the second route (tests). ``host``: ``ok``
    and the flags are CPU tensors the caller may read (the C++ kernels' eager step): nothing is written unless ``ok``
    is set, then only the flags that differ (usually none: a torch multi-tensor op on 0-dim CPU tensors costs
    about 0.6 us per tensor, a read 0.2 us). ``flags`` may be one bool vector instead (packed: the flags are views of
    its elements, hyperfused.ops.packed): one op."""
    if isinstance(flags, Tensor):
        if not host:
            flags.logical_or_(ok) if value else flags.logical_and_(~ok)
        elif bool(ok):
            flags.fill_(value)
        return
    if host:
        if bool(ok):
            for f in flags:
                if f.item() != value:
                    f.fill_(value)
        return
    if device_path is None:
        device_path = flags[0].device.type != "cpu"
    if not device_path:
        if value:
            torch._foreach_maximum_(flags, [ok] * len(flags))
        else:
            torch._foreach_minimum_(flags, [~ok] * len(flags))
        return
    both = torch.stack(flags)
    both = both.logical_or_(ok) if value else both.logical_and_(~ok)
    ref.copy_all(flags, list(both.unbind(0)))


def _all(flags: List[Tensor]) -> Tensor:
    out = flags[0]
    for f in flags[1:]:
        out = out & f
    return out


_MISSING = object()
_TRANSFORM_KEYS = ("weight_decay", "maximize", "decoupled_weight_decay")


def _same(a, b) -> bool:
    """Whether two param_group values are the same (tensors by value, containers element-wise)."""
    ta = type(a)
    if ta is type(b) and (ta is float or ta is bool or ta is int or ta is str or a is None):
        return a == b
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return False
        return a.shape == b.shape and bool((a == b).all())
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:           # noqa: BLE001 - incomparable values differ
        return False


def _immutable(v) -> bool:
    """A param_group value that cannot change without being replaced (compared by identity then)."""
    if v is None or v is _MISSING or type(v) in (float, int, bool, str):
        return True
    return type(v) is tuple and all(_immutable(x) for x in v)


def _match_tensor(have, want: Tensor, where: str, name: str) -> None:
    if not isinstance(have, Tensor):
        raise ValueError(f"{name}.load_state_dict: {where}: expected a tensor, the checkpoint has {type(have).__name__}")
    if tuple(have.shape) != tuple(want.shape) or have.dtype != want.dtype:
        raise ValueError(f"{name}.load_state_dict: {where}: the checkpoint has {have.dtype} of shape "
                         f"{tuple(have.shape)}, this optimizer {want.dtype} of shape {tuple(want.shape)}")
    if have.is_floating_point() and not _is_dtensor(have) and not bool(torch.isfinite(have).all()):
        raise ValueError(f"{name}.load_state_dict: {where}: the checkpoint holds NaN or Inf")


def _match_tree(have, want, where: str, name: str) -> None:
    """The same keys, tensor shapes, dtypes, and finite values (recursively through dicts)."""
    if isinstance(want, Tensor):
        _match_tensor(have, want, where, name)
        return
    if not isinstance(have, dict) or set(have) != set(want):
        keys = sorted(have) if isinstance(have, dict) else type(have).__name__
        raise ValueError(f"{name}.load_state_dict: {where}: the checkpoint has {keys}, this optimizer "
                         f"{sorted(want)}: another tower (kinds, learned sets or per-tensor lrs differ)")
    for k in want:
        _match_tree(have[k], want[k], f"{where}, {k!r}", name)


def _to_device(obj, dev):
    if isinstance(obj, Tensor):
        return obj.to(device=dev)
    if isinstance(obj, dict):
        return {k: _to_device(v, dev) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, dev) for v in obj]
    return obj
