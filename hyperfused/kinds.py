"""What an optimizer kind is, written once: every layer reads this table.

A kind (SGD, Adagrad, RMSprop, Adam) is described here by its hyperparameters (names, in the order of the
kernels' columns and of the flat vector the level above optimizes), how a learned one is parametrised, the
per-element state it keeps (in the kernels' order, with the condition under which each array exists, its
initial value, and whether it holds a previous value kept only to rebuild the Jacobian), and whether it counts
steps. The formulas themselves live once per language: ``hyperfused/ops/reference.py`` (the oracle),
``csrc/hyperfused/hyper_math.h`` (CPU and CUDA) and ``hyperfused/ops/triton/hyper.py``.

The widths the layers exchange (columns of the per-tensor scalar table, of the passes' rows, tower slots) are
named constants here. ``csrc/hyperfused/kinds.h`` mirrors this module for the compiled kernels; the test
tests/test_kinds.py reads that header and checks it against this table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

# --------------------------------------------------------------------------------------------------------
# Widths (kinds.h: the same names in kCamelCase)
# --------------------------------------------------------------------------------------------------------
HP_COLS = 3             # hyperparameter columns of the kernels: lr, h1 (momentum / alpha / beta1), h2 (beta2)
STATE_SLOTS = 3         # element-wise state arrays a kernel call takes per tensor (s0, s1, s2)
ROW_COLS = 4            # a pass's float64 row per tensor: sum g*J for each hyperparameter column, non-finite count
TABLE_COLS = 9          # the float64 per-tensor scalar table of a pass (columns below)
EPS_PER_LEVEL = 2       # [eps, eps_root]: the denominators' sqrt(s + eps_root) + eps
MAX_TOWER_LEVELS = 8    # levels 0..7 run in the compiled / Triton tower; a taller tower runs the Python tower
TOWER_HEAD = 3          # the tower ops' desc: [K, block, top_units] ...
TOWER_PER_LEVEL = 7     # ... then per level [kind, learn, momentum, per, nstate, nlr, units]
TOWER_SLOTS = 8         # tensors per level: lr, h1, h2, s0, s1, s2, step, valid
SCRATCH_ROWS_PER_LEVEL = 2 + STATE_SLOTS + 1   # the tower's scratch rows per level above 0: delta, new raw
#                         hyperparameters, new state arrays, step (csrc/hyperfused/tower.h)

# Columns of the scalar table
COL_LR, COL_H1, COL_H2, COL_RAW_LR, COL_DSIG1, COL_DSIG2, COL_STEP, COL_VALID, COL_DECAY = range(TABLE_COLS)
# (COL_DECAY, the update's table only: lr * weight_decay of a decoupled decay; the update multiplies x by 1 minus it
# before the kind's own step, in the math type; 0 where there is none, and x * 1 is x exactly)
# Column of a row that counts non-finite gradient elements
ROW_NONFINITE = HP_COLS

# Parametrisations of learned hyperparameters (raw r -> value c); kinds.h: kParamIdentity, ...
IDENTITY, SIGMA, SQUARE = 0, 1, 2
PARAM_NAMES = {IDENTITY: "identity", SIGMA: "sigma", SQUARE: "square"}


def learn_bit(column: int) -> int:
    """The bit of a hyperparameter column in the kernels' learned mask (lr 1, h1 2, h2 4)."""
    return 1 << column


#: a decoupled weight decay learned at level 0 (AdamW, Lion, Adam with decoupled_weight_decay): not a column of the
#: kernels (the level-0 passes take lr * weight_decay in the table's COL_DECAY), but an entry of the flat vector
#: the level above optimizes, after the kind's names; its bit in the towers' learned mask, and its name
LEARN_DECAY = 8
DECAY = "weight_decay"


@dataclass(frozen=True)
class Slot:
    """One element-wise state array: its state-dict key, when it exists (``when(cfg, learned)``), the cfg key
    holding its initial value (None: 0), and whether it holds a previous value (the previous gradient or
    momentum buffer) that the update writes and only the Jacobian reads."""
    name: str
    when: Callable[[dict, Sequence[str]], bool] = lambda cfg, learned: True
    init: Optional[str] = None
    prev: bool = False


@dataclass(frozen=True)
class Kind:
    name: str                          # "adam": the name in param specs, state dicts, the training command
    id: int                            # the kernels' kind id (kinds.h: enum Kind)
    cls: str                           # the optimizer class (hyperfused.Adam)
    hyper: Tuple[str, ...]             # hyperparameter names; position = kernel column (lr first)
    param: Dict[str, int] = field(default_factory=dict)   # name -> parametrisation when learned (identity if absent)
    slots: Tuple[Slot, ...] = ()       # element-wise state, in the kernels' order
    step: bool = False                 # keeps a per-tensor step count ("step", a 0-dim tensor)
    #: keeps one only in some configurations (``step_when(cfg)``; SGD with dampening, whose first step differs)
    step_when: Optional[Callable[[dict], bool]] = None
    learnable: Optional[Tuple[str, ...]] = None   # what a level above may learn (None: every hyperparameter)
    #: the cfg keys of the two constants a kernel call takes per level (EPS_PER_LEVEL): Adagrad's and RMSprop's
    #: denominators sqrt(s + eps_root) + eps; Adam's eps and v's initial value (its beta2 Jacobian at the first
    #: step is exactly 0 when v starts at 0); SGD's dampening and Nesterov flag (0 or 1)
    consts: Tuple[str, str] = ("eps", "eps_root")
    #: cfg keys fixed once the optimizer exists (they decide the state's shape or formulas: SGD's nesterov and
    #: dampening); a level above level 0 records them in the checkpoint, which a load then checks
    fixed: Tuple[str, ...] = ()

    @property
    def learnable_names(self) -> Tuple[str, ...]:
        return self.hyper if self.learnable is None else self.learnable

    def column(self, name: str) -> int:
        return self.hyper.index(name)

    def parametrisation(self, name: str) -> int:
        return self.param.get(name, IDENTITY)

    def state_keys(self, cfg: dict, learned: Sequence[str]) -> Tuple[str, ...]:
        """The element-wise state arrays that exist for this configuration, in the kernels' order (s0, s1, s2)."""
        return tuple(s.name for s in self.slots if s.when(cfg, learned))

    def counts_steps(self, cfg: dict) -> bool:
        """Whether a tensor's state keeps a step count in this configuration."""
        return self.step or (self.step_when is not None and self.step_when(cfg))

    def learn_mask(self, learned: Sequence[str]) -> int:
        return sum(LEARN_DECAY if n == DECAY else learn_bit(self.column(n)) for n in learned)

    def names_of(self, mask: int) -> Tuple[str, ...]:
        """The hyperparameter names of a learned mask."""
        return tuple(n for c, n in enumerate(self.hyper) if mask & learn_bit(c))

    def prev_grad_slot(self, cfg: dict) -> int:
        """The state slot holding the previous gradient when every hyperparameter is learned (-1: none)."""
        keys = self.state_keys(cfg, self.hyper)
        return keys.index("prev_grad") if "prev_grad" in keys else -1


def _momentum(cfg, learned):
    return bool(cfg.get("momentum", False))


def _nesterov(cfg, learned):
    return _momentum(cfg, learned) and bool(cfg.get("nesterov", 0.0))


def _sgd_prev_grad(cfg, learned):
    """SGD keeps the previous gradient for J_lr without momentum (d = g) and with Nesterov's (d = g + mu buf)."""
    return "lr" in learned and (not _momentum(cfg, learned) or _nesterov(cfg, learned))


KINDS: Dict[str, Kind] = {k.name: k for k in (
    Kind("sgd", 0, "SGD", ("lr", "momentum"),
         slots=(Slot("momentum_buffer", _momentum),
                Slot("prev_momentum_buffer", lambda cfg, learned: _momentum(cfg, learned) and "momentum" in learned,
                     prev=True),
                Slot("prev_grad", _sgd_prev_grad, prev=True)),
         step_when=lambda cfg: _momentum(cfg, ()) and float(cfg.get("dampening", 0.0)) != 0.0,
         consts=("dampening", "nesterov"), fixed=("nesterov", "dampening")),
    Kind("adagrad", 1, "Adagrad", ("lr",),
         slots=(Slot("sum", init="initial_accumulator_value"),
                Slot("prev_grad", lambda cfg, learned: bool(learned), prev=True))),
    Kind("rmsprop", 2, "RMSprop", ("lr", "alpha"), param={"lr": SQUARE, "alpha": SIGMA},
         slots=(Slot("square_avg"),
                Slot("prev_grad", lambda cfg, learned: bool(learned), prev=True))),
    Kind("adam", 3, "Adam", ("lr", "beta1", "beta2"), param={"beta1": SIGMA, "beta2": SIGMA},
         slots=(Slot("exp_avg"), Slot("exp_avg_sq", init="initial_exp_avg_sq"),
                Slot("prev_grad", lambda cfg, learned: "beta1" in learned or "beta2" in learned, prev=True)),
         step=True, consts=("eps", "initial_exp_avg_sq")),
    Kind("lion", 4, "Lion", ("lr", "beta1", "beta2"), learnable=("lr",),
         slots=(Slot("exp_avg"), Slot("prev_sign", lambda cfg, learned: "lr" in learned, prev=True))),
)}

BY_ID: Dict[int, Kind] = {k.id: k for k in KINDS.values()}


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer kind {name!r}; the kinds are {', '.join(KINDS)}") from None


def _check() -> None:
    for k in KINDS.values():
        assert 1 <= len(k.hyper) <= HP_COLS and k.hyper[0] == "lr", k
        assert set(k.param) <= set(k.hyper), k
        assert set(k.learnable_names) <= set(k.hyper), k
    assert sorted(BY_ID) == list(range(len(KINDS)))


_check()
