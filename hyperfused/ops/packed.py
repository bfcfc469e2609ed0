"""A param group's per-tensor 0-dim scalars packed into one vector each.

Every parameter's state holds two 0-dim tensors the passes read and write per step: its step count (``"step"``,
for kinds that count steps) and its moved flag (``"moved"``: the last update was taken, so the next step has a
Jacobian). Read or written one tensor at a time they cost a host read or an op per tensor, a stack per table on a
device. ``pack`` gathers them into one 1-D tensor each, and puts into every state dict the view of its own
element: the state dicts still hold a 0-dim tensor per key (checkpoints, ``state_dict()``, the reference backend
and user code see what they saw), and a step reads or writes the whole vector in one op.

The vectors are an optimisation, never the record: the state dicts are. ``PackedStates.intact()`` says whether
every state still holds its view (a loaded checkpoint, or code that put another tensor into a state, breaks it);
the optimizer then packs again, from the values the state dicts hold.
"""
from __future__ import annotations

import operator
from typing import List, Optional, Tuple

import torch

Tensor = torch.Tensor

_get_step = operator.itemgetter("step")
_get_moved = operator.itemgetter("moved")


class PackedStates(list):
    """A list of state dicts whose ``"step"`` tensors are the elements of ``steps`` (None where they could not be
    packed: a kind that counts no steps, or step counts of two dtypes) and whose ``"moved"`` flags are the elements
    of ``moved``."""
    __slots__ = ("steps", "moved", "_step_views", "_moved_views")

    def intact(self) -> bool:
        """Every state still holds the views ``pack`` put there (the same tensor objects)."""
        try:
            if self._step_views is not None and not all(map(operator.is_, map(_get_step, self), self._step_views)):
                return False
            return all(map(operator.is_, map(_get_moved, self), self._moved_views))
        except KeyError:          # a key removed from a state
            return False

    def copy(self) -> "PackedStates":
        out = PackedStates(self)
        out.steps, out.moved, out._step_views, out._moved_views = (self.steps, self.moved, self._step_views,
                                                                   self._moved_views)
        return out


def _gather(states: List[dict], key: str) -> Optional[Tuple[Tensor, List[Tensor]]]:
    """The states' ``key`` tensors, packed (a new vector, each state given its view); None where there are none
    or they do not share one dtype and device."""
    ts = [st.get(key) for st in states]
    if not ts or any(t is None or t.dim() != 0 for t in ts):
        return None
    if any(t.dtype != ts[0].dtype or t.device != ts[0].device for t in ts):
        return None
    vec = torch.stack(ts)
    views = [vec[i] for i in range(len(ts))]      # (select: single-output views, writable anywhere)
    for st, v in zip(states, views):
        st[key] = v
    return vec, views


def pack(states: List[dict]) -> Optional[PackedStates]:
    """``states`` as a PackedStates, their step counts and moved flags moved into new vectors (the same values);
    None where the moved flags cannot be packed (then nothing is changed)."""
    if not states or any("moved" not in st for st in states):
        return None
    moved = _gather(states, "moved")
    if moved is None:
        return None
    out = PackedStates(states)
    out.moved, out._moved_views = moved
    steps = _gather(states, "step")
    out.steps, out._step_views = steps if steps is not None else (None, None)
    return out


def steps_of(states) -> Optional[Tensor]:
    """The packed step counts of ``states`` (a PackedStates), or None."""
    return getattr(states, "steps", None)


def moved_of(states):
    """The moved flags of ``states``: the packed vector, or a list of the states' 0-dim flags."""
    vec = getattr(states, "moved", None)
    return vec if vec is not None else [st["moved"] for st in states]
