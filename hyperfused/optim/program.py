"""A param group's usual step, with its decisions taken once.

Most steps of a training loop are alike: the same parameters, each with a fresh dense gradient, the same state,
the same configuration. For such a step ``HyperOptimizer.step`` walks the same branches every time (which
backend, which transforms, whether the tower fuses into pass A, which caches hold) and on a small model that
walk costs more than the kernels. A ``StepProgram`` is made from a step's plan once that plan is found cacheable
(``_collect``): it keeps what those branches decided and the objects they chose, and the next steps run just
the calls the general path ends up making, through the same helpers (``fused.hyper_reduce_tower``,
``fused.hyper_update``, ``tower.commit``, the optimizer's value caches), so both paths compute the same thing bit
for bit (tests/test_program.py runs every configuration both ways).

A program covers exact mode on the C++ kernels (CPU tensors), every tensor of the group with a gradient, no
gradient transform (maximize, weight decay) and, above level 0, a tower the compiled ops fuse into pass A.
Everything else, and every step where something it was made from has changed (``take``: the parameters, their
states, the group's values, the levels' tensors), goes the general way, which makes a new program when its plan
can be kept again.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .. import kinds
from ..kinds import DECAY
from ..ops import fused, packed
from ..ops import reference as ref
from ..ops import tower as tower_ops

Tensor = torch.Tensor


class StepProgram:
    """The usual step of param group ``gi``, made by ``build`` from the plan of a step; ``take`` says whether
    this step is one it covers (and hands the gradients over), ``reduce`` and ``finish`` run it (pass A and the
    levels' plan, then, with the step's verdict, the levels' commit, pass B and what the next step needs)."""

    __slots__ = ("gi", "hit", "specs", "levels", "hp", "used", "kind", "cfg", "learned", "kernel_learned", "per",
                 "backend", "n", "params", "states", "device", "keys", "head", "counts", "prev", "d0_map", "sigma",
                 "other", "exact", "used_values", "host_table")

    @classmethod
    def build(cls, opt, plan: Dict[str, Any], hit: tuple) -> Optional["StepProgram"]:
        """A program for the steps that repeat ``plan`` (just cached as ``hit`` by ``_collect``), or None where it
        is not one a program covers."""
        specs = plan["specs"]
        lv, _, learned0, per0, cfg0 = specs[0]
        levels = plan["levels"]
        states = plan["states"]
        if (opt._one_pass or plan["group"] is not None or plan["backend"].name != "cpu"
                or torch.compiler.is_compiling() or not isinstance(states, packed.PackedStates)
                or len(plan["params"]) != plan["n"] or not plan["params"]):
            return None
        if cfg0["maximize"] or cfg0["weight_decay"] or DECAY in learned0:     # a transform or a decay
            return None
        if len(specs) == 1:
            if learned0:
                return None
        elif not tower_ops.fusable(levels, specs, plan["grads"], per0, plan["n"]):
            return None
        p = cls()
        p.gi, p.hit, p.specs, p.levels = plan["gi"], hit, specs, levels
        p.hp, p.used = levels[0]["hp"], levels[0].get("used")
        p.kind, p.cfg, p.learned, p.per = opt.kind, cfg0, learned0, per0
        p.kernel_learned = opt._kernel_learned(learned0)
        p.backend, p.n = plan["backend"], plan["n"]
        p.params, p.states, p.device = plan["params"], states, plan["device"]
        p.keys, p.head, p.counts = fused._meta(p.kind, cfg0, p.kernel_learned)
        p.prev = "prev_grad" in p.keys
        p.d0_map = fused._d0_map(p.kind, p.kernel_learned, per0)
        spec = kinds.KINDS[p.kind]
        p.sigma = [name for name in learned0 if spec.parametrisation(name) == kinds.SIGMA]
        p.other = [name for name in learned0 if spec.parametrisation(name) not in (kinds.SIGMA, kinds.IDENTITY)]
        fixed = opt._exact_fixed(specs[0], dict.fromkeys(p.hp))
        p.exact = {name: v for name, v in fixed.items() if v is not None}   # (the fixed values pass B takes exact)
        p.used_values = None
        p.host_table = p.n <= fused._HOST_TABLE_MAX    # the tables are filled from host numbers (fused.scalars)
        return p

    def take(self, opt, gi: int, group: Dict[str, Any]) -> Optional[List[Tensor]]:
        """This step's gradients when the step is one this program covers (everything it was made from is as it
        was, and the gradients are contiguous and of one dtype, as the parameters); None: the general path runs
        it."""
        if opt.__dict__.get("_collected", {}).get(gi) is not self.hit or opt._level_specs(gi) is not self.specs:
            return None
        levels = opt._group_tower(gi)["levels"]
        if levels is not self.levels or levels[0]["hp"] is not self.hp or levels[0].get("used") is not self.used:
            return None
        grads = opt._grads_again(gi, group, self.hit)
        if (grads is None or not fused._one_dtype(grads) or not fused._all_contiguous(grads)
                or not fused._all_contiguous(self.params)):
            return None
        return grads

    def _steps(self):
        """The step counts for a table: the packed vector's numpy view where the table is filled on the host."""
        states = self.states
        if self.host_table and self.counts and states.steps is not None:
            return states.steps_np
        return fused._steps(states, self.counts)

    def _lists(self) -> List[List[Tensor]]:
        return fused._lists(self.kind, self.cfg, self.kernel_learned, self.states)

    def _values(self, raw: Dict[str, Tensor], skip=()):
        """(values, raw values) of level 0's raw tensors ``raw`` for a host table, as ``_values_of`` makes them: per
        name a number (a one-element tensor's) or the tensor itself (per-tensor lrs); none for the names in
        ``skip``. The sigma-parametrised ones are computed together, by ``reference.sigma`` on their stack (the same
        arithmetic, element by element)."""
        raws = {name: (t.item() if t.numel() == 1 else t) for name, t in raw.items() if name not in skip}
        vals = dict(raws)
        if self.sigma:
            vals.update(zip(self.sigma, ref.sigma(torch.stack([raw[name] for name in self.sigma])).tolist()))
        for name in self.other:                 # another parametrisation (RMSprop's squared lr)
            v = ref.to_value(self.kind, name, raw[name])
            vals[name] = v.item() if v.numel() == 1 else v
        return vals, raws

    def reduce(self, opt, grads: List[Tensor]) -> tuple:
        """Pass A and the levels' tentative step (height 0: the read of the gradients that decides the skip):
        (this group's verdict, what ``finish`` commits). As ``fused.hyper_reduce_tower`` with the values of
        ``_used_values``."""
        if len(self.specs) == 1:
            return self.backend.finite(grads), None
        args = tower_ops._args(self.levels, self.specs, self.device, self.hp["lr"].dtype)
        states = self.states
        valid = fused._check_prev_grads(states, states.moved) if self.prev else states.moved
        used = self.used
        hit = self.used_values          # the last update's values, while ``used`` holds what it was copied
        if not self.host_table:         # (a table built by tensor ops: the general path's values, as tensors)
            vals, raws = opt._used_values(self.gi, self.specs[0], used), used
        elif hit is not None and hit[2] == tuple(t._version for t in used.values()):
            vals, raws = hit[0], hit[1]
            if self.exact:                # (pass B took these as exact numbers; the Jacobian, as used holds them)
                vals, raws = dict(vals), dict(raws)
                for name in self.exact:
                    t = used[name]
                    vals[name] = raws[name] = t.item() if t.numel() == 1 else t
        else:
            vals, raws = self._values(used)
        if valid is states.moved and self.host_table:
            valid = states.moved_np
        scal = fused.scalars(self.kind, self.kernel_learned, self.n, vals, raws, self._steps(), valid, self.device,
                             host=True, role=0)
        _, scr, ok = fused._compiled().hyper_reduce_tower(*self.head, grads, *self._lists(), scal, self.d0_map,
                                                          *args, None)
        return ok, (scr, args)

    def finish(self, opt, grads: List[Tensor], scratch, ok: Tensor) -> None:
        """With the step's verdict ``ok``: the levels' commit, pass B with the new values (``_update_values``'), the
        moved flags and the values the next step's Jacobian is rebuilt with (``_keep_used``'s). Pass B as
        ``fused.hyper_update``."""
        if scratch is not None:
            tower_ops.commit(self.levels, self.specs, scratch, ok)
        states = self.states
        hp = self.hp
        if self.host_table:
            vals, raws = self._values(hp, self.exact)
            upd = dict(vals, **self.exact) if self.exact else vals
        else:
            upd, raws = opt._update_values(self.gi, self.specs[0], hp), hp
        keep = fused._keep_flags(states, grads, self.params, True) if self.prev else None
        # column 7 of the update's table: write the previous gradient (1) or keep the gradient tensor (0)
        store = [0.0 if k else 1.0 for k in keep] if keep is not None else [1.0] * self.n
        scal = fused.scalars(self.kind, self.kernel_learned, self.n, upd, raws, self._steps(), store, self.device,
                             step_offset=1.0, host=True, role=1)
        steps = fused._steps(states, self.counts)
        fused._compiled().hyper_update(*self.head, self.params, grads, *self._lists(), scal, None, ok, None)
        taken = bool(ok)                   # (the C++ kernels' verdict is on the host)
        fused._after_update(states, grads, keep, steps, ok, taken)
        if self.learned and taken:
            states.moved.fill_(True)       # moved |= ok
        if not self.host_table:
            opt._keep_used_of(self.gi, self.learned, self.levels[0], True, ok)
            return
        # (the general path's cache of the last update's values checks used's version counters: the copy below
        # moves them, so a general step after this one computes them again)
        if self.learned and taken:
            used = self.used
            ref.copy_all([used[name] for name in hp], list(hp.values()))
            # (a tensor taken as it is, a per-tensor lr, is hp's own: used's copy is the one that stays)
            self.used_values = ({k: (used[k] if v is hp.get(k) else v) for k, v in vals.items()},
                                {k: (used[k] if v is hp.get(k) else v) for k, v in raws.items()},
                                tuple(t._version for t in used.values()))
