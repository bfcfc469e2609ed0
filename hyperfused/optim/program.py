"""A param group's usual step, with its decisions taken once.

Most steps of a training loop are alike: the same parameters, each with a fresh dense gradient, the same state,
the same configuration. For such a step ``HyperOptimizer.step`` walks the same branches every time (which
backend, which transforms, whether the tower fuses into pass A, which caches hold) and on a small model that
walk costs more than the kernels. A ``StepProgram`` is made from a step's plan once that plan is found cacheable
(``_collect``): it keeps what those branches decided and the objects they chose, and the next steps run just
the calls the general path ends up making: the ops hyper_reduce_tower, hyper_tower_commit and hyper_update, driven
by two C++ functions (``hyperfused._C.program_reduce`` / ``program_update``, csrc/cpu/program.cpp) that fill the
per-tensor scalar tables and write what a taken step leaves behind. Both paths compute the same thing bit for bit
(tests/test_program.py runs every configuration both ways).

A program covers exact mode on the C++ kernels (CPU tensors), every tensor of the group with a gradient, step
counts of one dtype, no gradient transform (maximize, weight decay) and, above level 0, a tower the compiled ops
fuse into pass A.
Everything else, and every step where something it was made from has changed (``take``: the parameters, their
states, the group's values, the levels' tensors), goes the general way, which makes a new program when its plan
can be kept again.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..kinds import DECAY, TABLE_COLS
from ..ops import _ext, fused, packed
from ..ops import tower as tower_ops

Tensor = torch.Tensor


class StepProgram:
    """The usual step of param group ``gi``, made by ``build`` from the plan of a step; ``take`` says whether
    this step is one it covers (and hands the gradients over), ``reduce`` and ``finish`` run it (pass A and the
    levels' plan, then, with the step's verdict, the levels' commit, pass B and what the next step needs)."""

    __slots__ = ("gi", "hit", "specs", "levels", "hp", "used", "kind", "cfg", "learned", "kernel_learned", "per",
                 "backend", "n", "params", "states", "device", "keys", "head", "counts", "prev", "d0_map", "exact",
                 "tables")

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
                or len(plan["params"]) != plan["n"] or not plan["params"] or _ext.direct_ops() is None):
            return None
        if cfg0["maximize"] or cfg0["weight_decay"] or DECAY in learned0:     # a transform or a decay
            return None
        if len(specs) == 1:
            if learned0:
                return None
        elif not tower_ops.fusable(levels, specs, plan["grads"], per0, plan["n"]):
            return None
        kernel_learned = opt._kernel_learned(learned0)
        keys, head, counts = fused._meta(opt.kind, cfg0, kernel_learned)
        if counts and states.steps is None:         # (step counts of two dtypes: not one vector)
            return None
        p = cls()
        p.gi, p.hit, p.specs, p.levels = plan["gi"], hit, specs, levels
        p.hp, p.used = levels[0]["hp"], levels[0].get("used")
        p.kind, p.cfg, p.learned, p.per = opt.kind, cfg0, learned0, per0
        p.kernel_learned, p.keys, p.head, p.counts = kernel_learned, keys, head, counts
        p.backend, p.n = plan["backend"], plan["n"]
        p.params, p.states, p.device = plan["params"], states, plan["device"]
        p.prev = "prev_grad" in keys
        p.d0_map = fused._d0_map(p.kind, kernel_learned, per0)
        # pass B takes the fixed hyperparameters (lr aside) as the group's exact numbers (NaN: the tensor's value)
        fixed = opt._exact_fixed(specs[0], dict.fromkeys(p.hp))
        p.exact = [float("nan") if v is None else v for v in fixed.values()]
        p.tables = [torch.empty((p.n, TABLE_COLS), dtype=torch.float64) for _ in range(2)]    # pass A's, pass B's
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

    def _lists(self) -> List[List[Tensor]]:
        return fused._lists(self.kind, self.cfg, self.kernel_learned, self.states)

    def reduce(self, opt, grads: List[Tensor]) -> tuple:
        """Pass A and the levels' tentative step (height 0: the read of the gradients that decides the skip):
        (this group's verdict, what ``finish`` commits). As ``fused.hyper_reduce_tower`` with the values of
        ``_used_values``."""
        if len(self.specs) == 1:
            return self.backend.finite(grads), None
        args = tower_ops._args(self.levels, self.specs, self.device, self.hp["lr"].dtype)
        states = self.states
        valid = fused._check_prev_grads(states, states.moved) if self.prev else states.moved
        scr, ok = _ext.direct_ops().program_reduce(*self.head, grads, *self._lists(), list(self.used.values()),
                                                   states.steps if self.counts else None, valid, self.tables[0],
                                                   self.d0_map, *args)
        return ok, (scr, args)

    def finish(self, opt, grads: List[Tensor], scratch, ok: Tensor) -> None:
        """With the step's verdict ``ok``: the levels' commit, pass B with the new values (``_update_values``'), the
        step counts, the moved flags and the values the next step's Jacobian is rebuilt with (``_keep_used``'s),
        the gradients kept as previous gradients. Pass B as ``fused.hyper_update``."""
        states = self.states
        keep = fused._keep_flags(states, grads, self.params, True) if self.prev else None
        # column 7 of the update's table: write the previous gradient (1) or keep the gradient tensor (0)
        store = [0.0 if k else 1.0 for k in keep] if keep is not None else [1.0] * self.n
        scr, (desc, eps, slots) = scratch if scratch is not None else (None, ([], [], []))
        learned = bool(self.learned)
        taken = _ext.direct_ops().program_update(
            *self.head, self.params, grads, *self._lists(), list(self.hp.values()), self.exact, store,
            states.steps if self.counts else None, states.moved, list(self.used.values()) if learned else [],
            self.tables[1], desc, eps, slots, scr, ok, learned)
        fused._after_update(states, grads, keep, None, ok, taken)       # (the step counts: counted above)
