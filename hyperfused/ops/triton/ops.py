"""The Triton kernels as torch custom ops (namespace ``hyperfused_triton``), with the compiled ops' schemas and
fake implementations (hyperfused/ops/_fake.py): each launch is then one opaque op that torch.compile traces by its
fake (shapes, dtypes, what it mutates), as the C++/CUDA ops are. The Python launchers (hyper.py, agd.py) do host
work a trace cannot follow (pointer tables from data_ptr, per-launch checks); inside an op they run as in eager.

The schemas are read from the compiled ops, so the C++ extension must be loaded; without it the backend calls
the launchers directly (eager only)."""
from __future__ import annotations

from typing import Optional

import torch

#: op name -> the launcher module that implements it
_OPS = {"hyper_reduce": "hyper", "hyper_update": "hyper", "nonfinite_count": "hyper",
        "agd_sumsq": "agd", "agd_update": "agd", "agd_gv": "agd", "agd_gtu": "agd", "agd_normalize_rows": "agd"}
_state = {"lib": None, "tried": False}


def ops() -> Optional[object]:
    """``torch.ops.hyperfused_triton`` (registered on first use), or None when the compiled extension, whose
    schemas it copies, is not loaded."""
    if not _state["tried"]:
        _state["tried"] = True
        import importlib
        from .. import _ext, _fake
        if not _ext.load_extension():
            return None
        lib = torch.library.Library("hyperfused_triton", "DEF")
        for name, module in _OPS.items():
            schema = str(getattr(torch.ops.hyperfused, name).default._schema).split("::", 1)[1]
            lib.define(schema)
            lib.impl(name, getattr(importlib.import_module(f".{module}", __package__), name),
                     "CompositeExplicitAutograd")
            torch.library.register_fake(f"hyperfused_triton::{name}", _fake.FAKES[name], lib=lib)
        _state["lib"] = lib
    return torch.ops.hyperfused_triton if _state["lib"] is not None else None
