"""The kinds table (hyperfused/kinds.py) is the one description of every optimizer kind: the compiled kernels'
mirror (csrc/hyperfused/kinds.h) must say the same, and every Python layer must read it."""
from __future__ import annotations

import itertools
import pathlib
import re

import pytest
import torch

import hyperfused as hf
from hyperfused import kinds
from hyperfused.ops import reference as ref

HEADER = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "hyperfused" / "kinds.h"


def _header():
    text = HEADER.read_text()
    consts = {m.group(1): int(m.group(2)) for m in re.finditer(r"\b(k[A-Z]\w*) = (-?\d+)\b", text)}
    # derived constants: "kScratchRowsPerLevel = 2 + kStateSlots + 1"
    for m in re.finditer(r"constexpr int (k\w+) = ([\w +*-]*[a-z][\w +*-]*);", text):
        consts[m.group(1)] = eval(m.group(2), {}, dict(consts))          # noqa: S307 - our own header
    params = {"kParamIdentity": consts["kParamIdentity"], "kParamSigma": consts["kParamSigma"],
              "kParamSquare": consts["kParamSquare"]}
    rows = []
    block = text[text.index("#define HF_KINDS(X)"):]
    block = block[:block.index("\n\n")]
    for m in re.finditer(r"X\((\w+), (\d+), (\d+), (\w+), (\w+), (\w+), (-?\d+), (-?\d+), (\d)\)", block):
        name, kid, nhp, p0, p1, p2, prev, prev_mom, steps = m.groups()
        rows.append(dict(enum=name, id=int(kid), nhp=int(nhp), param=(params[p0], params[p1], params[p2]),
                         prev=int(prev), prev_mom=int(prev_mom), steps=bool(int(steps))))
    return consts, rows


def test_header_widths_match_the_table():
    consts, _ = _header()
    want = {"kHpCols": kinds.HP_COLS, "kStateSlots": kinds.STATE_SLOTS, "kRowCols": kinds.ROW_COLS,
            "kTableCols": kinds.TABLE_COLS, "kEpsPerLevel": kinds.EPS_PER_LEVEL,
            "kMaxTowerLevels": kinds.MAX_TOWER_LEVELS, "kTowerHead": kinds.TOWER_HEAD,
            "kTowerPerLevel": kinds.TOWER_PER_LEVEL, "kTowerSlots": kinds.TOWER_SLOTS,
            "kScratchRowsPerLevel": kinds.SCRATCH_ROWS_PER_LEVEL, "kRowNonfinite": kinds.ROW_NONFINITE,
            "kColLr": kinds.COL_LR, "kColH1": kinds.COL_H1, "kColH2": kinds.COL_H2, "kColRawLr": kinds.COL_RAW_LR,
            "kColDsig1": kinds.COL_DSIG1, "kColDsig2": kinds.COL_DSIG2, "kColStep": kinds.COL_STEP,
            "kColValid": kinds.COL_VALID, "kColDecay": kinds.COL_DECAY, "kLearnLr": kinds.learn_bit(0),
            "kLearnH1": kinds.learn_bit(1), "kLearnH2": kinds.learn_bit(2), "kLearnDecay": kinds.LEARN_DECAY,
            "kParamIdentity": kinds.IDENTITY,
            "kParamSigma": kinds.SIGMA, "kParamSquare": kinds.SQUARE}
    assert {k: consts.get(k) for k in want} == want


def test_header_kinds_match_the_table():
    _, rows = _header()
    assert len(rows) == len(kinds.KINDS)
    for row in rows:
        spec = kinds.BY_ID[row["id"]]
        assert row["enum"].lower() == "k" + spec.name, (row, spec.name)
        assert row["nhp"] == len(spec.hyper), spec.name
        params = tuple(spec.parametrisation(spec.hyper[c]) if c < len(spec.hyper) else kinds.IDENTITY
                       for c in range(kinds.HP_COLS))
        assert row["param"] == params, spec.name
        assert row["prev"] == spec.prev_grad_slot({"momentum": False}), spec.name
        assert row["prev_mom"] == spec.prev_grad_slot({"momentum": True}), spec.name
        assert row["steps"] == spec.step, spec.name


def _configs(spec):
    extra = [{"momentum": True, "nesterov": 1.0}, {"momentum": True, "dampening": 0.5}] if spec.name == "sgd" else []
    for cfg in [{"momentum": False}, {"momentum": True}] + extra:
        for r in range(len(spec.hyper) + 1):
            for learned in itertools.combinations(spec.hyper, r):
                yield cfg, learned


@pytest.mark.parametrize("name", sorted(kinds.KINDS))
def test_state_fits_the_kernels_and_reference_follows_the_table(name):
    spec = kinds.KINDS[name]
    for cfg, learned in _configs(spec):
        keys = spec.state_keys(cfg, learned)
        assert len(keys) <= kinds.STATE_SLOTS, (name, cfg, learned, keys)
        full = dict(cfg, eps=1e-8, initial_accumulator_value=0.25, initial_exp_avg_sq=0.5)
        st = ref.init_state(name, torch.zeros(3), full, learned)
        assert [k for k in st if k != "step"] == list(keys)
        assert ("step" in st) == spec.counts_steps(cfg)
        for slot in spec.slots:
            if slot.name in st and slot.init:
                assert torch.equal(st[slot.name], torch.full((3,), full[slot.init]))


@pytest.mark.parametrize("name", sorted(kinds.KINDS))
def test_optimizer_classes_read_the_table(name):
    spec = kinds.KINDS[name]
    cls = getattr(hf, spec.cls)
    assert cls.kind == name
    assert cls.hyper_names == spec.hyper


@pytest.mark.parametrize("name", sorted(kinds.KINDS))
def test_parametrisations_round_trip(name):
    spec = kinds.KINDS[name]
    for hp in spec.hyper:
        v = torch.tensor(0.3, dtype=torch.float64)
        assert torch.allclose(ref.to_value(name, hp, ref.to_raw(name, hp, v)), v, rtol=0, atol=1e-15)
        if spec.parametrisation(hp) == kinds.IDENTITY:
            assert ref.to_raw(name, hp, v) is v


def test_the_ops_refuse_a_kind_outside_the_table():
    from hyperfused import ops
    if not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    ops.load_extension()
    bad = len(kinds.KINDS)
    g = [torch.zeros(4)]
    scal = torch.zeros(1, kinds.TABLE_COLS, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="kind must be an id of the kinds table"):
        torch.ops.hyperfused.hyper_reduce(bad, 0, False, [1e-8, 0.0], g, [], [], [], scal)
    with pytest.raises(RuntimeError, match="kind must be an id of the kinds table"):
        torch.ops.hyperfused.hyper_update(bad, 0, False, [1e-8, 0.0], [torch.zeros(4)], g, [], [], [], scal, None,
                                          torch.ones((), dtype=torch.bool))
