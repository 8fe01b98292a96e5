"""Measured mini-profiles of a tiny model on both host runtimes, and the profile file format."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from edgeprune import models
from edgeprune.api import measure, profile
from edgeprune.errors import ConfigError, ProfileError, RuntimeAdapterError
from edgeprune.graph.layers import layer_units
from edgeprune.profiling import LatencyProfile
from edgeprune.profiling import measurement as measure_mod
from edgeprune.profiling.latency import CALIBRATION_ROUNDS, PROBE_ROUNDS
from edgeprune.targets import load_target
from tests.nets import TinyNet, randomize_bn

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", params=["host-onnxruntime", "host-litert"])
def mini(request):
    torch.manual_seed(0)
    model = randomize_bn(TinyNet(width=32))
    return model, profile(model, target=request.param, input_shape=SHAPE, max_points=2)


def test_the_full_model_is_predicted_as_its_own_calibration_row_says(mini):
    """The prediction path (layer units -> tables -> scale and intercept) gives, for the
    profiled model itself, the number the profile recorded for its keep=1.0 calibration. (How
    close predictions come to measurements is scripts/bench_latency_predictor.py's job.)"""
    model, prof = mini
    full = next(c for c in prof.calibration if c["keep"] == 1.0)
    assert prof.predict_ms(model) == pytest.approx(full["predicted_ms"], rel=1e-9)
    assert full["measured_ms"] > 0 and prof.layer_scale > 0


def test_a_model_with_residual_blocks_is_calibrated_without_them_too():
    """The pruner removes residual blocks below the channel floor; the fit has seen such a
    network: the thinnest copy with every block removed is a fourth calibration, predicted as
    its row says. A model of several channel groups (here three) is also calibrated with every
    other group at round_to / 4 and the rest full (even groups, then odd): narrow layers
    beside wide ones, as a pruned network has them, the rows that tell narrow_scale from
    layer_scale."""
    from edgeprune.graph import group_structure, shrink_to_widths
    from edgeprune.graph.blocks import remove_blocks
    from edgeprune.models.resnet import BasicBlock

    torch.manual_seed(0)
    model = randomize_bn(torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), BasicBlock(32, 32, 1), BasicBlock(32, 32, 1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))).eval()
    prof = profile(model, target="host-onnxruntime", input_shape=SHAPE, max_points=2)
    assert [(c["keep"], c["blocks_removed"]) for c in prof.calibration] == [
        (1.0, 0), (0.6, 0), (0.3, 0), (0.3, 2), (None, 0), (None, 0), (None, 0)]
    x = torch.zeros(1, *SHAPE)
    thin = shrink_to_widths(model, x, {g.name: 16 for g in group_structure(model, x)})  # 0.3 of 32 -> 16
    blockless = remove_blocks(thin, ["2", "3"])
    row = prof.calibration[3]
    assert prof.predict_ms(blockless) == pytest.approx(row["predicted_ms"], rel=1e-9)
    assert row["measured_ms"] > 0 and len(row["pass_medians_ms"]) == prof.target.measure.passes
    groups = group_structure(model, x)
    assert len(groups) == 3
    for c in prof.calibration[-2:]:
        mixed = shrink_to_widths(model, x, {g.name: 4 if i % 2 == c["alternate"] else g.width
                                            for i, g in enumerate(groups)})
        assert c["width"] == 4 and prof.predict_ms(mixed) == pytest.approx(c["predicted_ms"], rel=1e-9)
        assert 0 < c["narrow_ms"] < c["layers_ms"] and c["measured_ms"] > 0
    assert [c["alternate"] for c in prof.calibration[-2:]] == [0, 1]
    assert "every other group (even)" in str(prof) and "every other group (odd)" in str(prof)


def test_profile_contents(mini):
    model, prof = mini
    assert prof.source == "measured" and prof.target.threads == 1
    assert set(prof.layers) == {u.path for u in layer_units(model, SHAPE)}
    stem = prof.tables[prof.layers["stem.0"]]
    # input channels are fixed; output channels are measured at round_to / 4 too
    assert stem.c_in == (3,) and stem.c_out == (4, 16, 32)
    assert prof.tables[prof.layers["fc"]].c_out == (10,)  # classes are fixed
    assert prof.tables[prof.layers["dw.0"]].kind == "dwconv"
    assert len(prof.calibration) == 4 and prof.overhead_ms > 0
    assert prof.host["cores"] >= 1 and prof.runtime_version
    breakdown = prof.breakdown(model)
    assert sum(breakdown.values()) == pytest.approx(prof.predict_ms(model))


def test_json_round_trip(mini, tmp_path):
    model, prof = mini
    path = prof.save(tmp_path / "p.json")
    back = LatencyProfile.load(path, target=prof.target.name)
    assert back.predict_ms(model) == pytest.approx(prof.predict_ms(model))
    assert back.to_dict() == prof.to_dict()
    d = json.loads(path.read_text())
    for key in ("schema_version", "target", "runtime", "runtime_version", "host", "created",
                "edgeprune_version", "protocol", "tables", "source"):
        assert key in d


def _edit(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d.update(format="nope"), "not an edgeprune latency profile"),
    (lambda d: d.update(schema_version=7), "schema_version 7"),
    (lambda d: d.update(source="guess"), "source 'guess'"),
    (lambda d: d.pop("tables"), "malformed"),
    (lambda d: d["layers"].update({"stem.0": "conv:nowhere"}), "lacks"),
    (lambda d: d.update(runtime_version="0.0.1"), "re-profile"),
    (lambda d: d["target"].update(runtime="tvm"), "runtime = 'tvm'"),
    (lambda d: d["steps"]["conv:k1x1"]["c_out"].update(share=[0.0, 1.0]), "steps are malformed"),
    (lambda d: d["steps"]["conv:k1x1"].update(c_mid=d["steps"]["conv:k1x1"]["c_out"]), "steps are malformed"),
])
def test_schema_errors(mini, tmp_path, edit, msg):
    _, prof = mini
    path = prof.save(tmp_path / "p.json")
    _edit(path, edit)
    with pytest.raises(ProfileError, match=msg):
        LatencyProfile.load(path)


def test_not_json_and_missing(tmp_path):
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(ProfileError, match="not valid JSON"):
        LatencyProfile.load(tmp_path / "p.json")
    with pytest.raises(ProfileError, match="does not exist"):
        LatencyProfile.load(tmp_path / "none.json")


def test_other_target_is_refused(mini, tmp_path):
    _, prof = mini
    path = prof.save(tmp_path / "p.json")
    other = "host-litert" if prof.target.name == "host-onnxruntime" else "host-onnxruntime"
    with pytest.raises(ProfileError, match=f"not '{other}'"):
        LatencyProfile.load(path, target=other)


def test_a_profile_from_another_cpu_with_the_same_model_name_is_refused(mini, tmp_path):
    """Two hosts sold as "AMD EPYC" (one with AVX-512 VNNI, one without) ran the full-int8
    ResNet-20 at 0.23 and 1.14 ms: the CPU id and kernel instruction sets decide, not the name."""
    _, prof = mini
    here = prof.host
    assert here["cpu_id"] and isinstance(here["isa"], list)
    prof.check_host()  # measured here: accepted
    other_isa = sorted(set(here["isa"]) ^ {"avx512_vnni"})
    twin = dataclasses.replace(prof, host={**here, "isa": other_isa})
    path = twin.save(tmp_path / "twin.json")
    with pytest.raises(ProfileError, match=r"instruction sets differ .*avx512_vnni.*re-profile on this machine"):
        LatencyProfile.load(path)
    stepping = dataclasses.replace(prof, host={**here, "cpu_id": here["cpu_id"] + " (another)"})
    with pytest.raises(ProfileError, match="CPU id .* there"):
        stepping.check_host()
    old = dataclasses.replace(prof, host={k: v for k, v in here.items() if k not in ("cpu_id", "isa")})
    with pytest.raises(ProfileError, match="records no CPU id or instruction sets"):
        old.check_host()
    assert LatencyProfile.load(path, check_host=False).host["isa"] == other_isa  # still a record


def test_other_architecture_is_refused(mini):
    _, prof = mini
    with pytest.raises(ProfileError, match="does not match the profiled architecture"):
        prof.predict_ms(models.create("resnet20"))


def test_the_profile_measures_how_latency_steps_per_kind_of_layer_and_kernel(mini):
    _, prof = mini
    r = prof.target.round_to
    # TinyNet: the stem's c_in and the classifier's classes are fixed, every other axis prunes;
    # the 3x3 stem and the 1x1 conv are probed apart
    assert {k: sorted(a) for k, a in prof.steps.items()} == \
        {"conv:k1x1": ["c_in", "c_out"], "conv:k3x3": ["c_out"], "dwconv:k3x3": ["c_in"], "linear": ["c_in"]}
    for key, axes in prof.steps.items():
        kind = key.split(":")[0]
        for st in axes.values():
            assert st["signature"] in prof.tables and prof.tables[st["signature"]].kind == kind
            assert st["signature"].startswith(key)
            assert st["widths"] == list(range(2 * r, 3 * r + 1)) and len(st["measured_ms"]) == r + 1
            assert len(st["share"]) == r + 1 and (st["share"][0], st["share"][-1]) == (0.0, 1.0)
            assert st["flat"] or st["irregular"] or r % st["step"] == 0
            first = st["first"]  # the first step, from zero channels
            assert first["widths"] == list(range(r + 1)) and first["measured_ms"][0] == 0.0
            assert all(v >= 0 for v in first["measured_ms"])  # a tiny layer may time at the overhead
            assert kind != "conv" or first["measured_ms"][-1] > 0
            assert len(first["share"]) == r + 1 and (first["share"][0], first["share"][-1]) == (0.0, 1.0)
    assert prof.build["probe_points"] == 5 * (2 * r + 1) - 1  # conv:k1x1's two probes share (2r, 2r)


def _with_steps(prof, tile):
    from edgeprune.profiling.table import fit_step

    r = prof.target.round_to
    share = fit_step(0.0, [math.ceil(d / tile) * tile / r for d in range(1, r)], 1.0)["share"]
    return dataclasses.replace(prof, steps={k: {a: {**st, "share": share} for a, st in axes.items()}
                                            for k, axes in prof.steps.items()})


def test_a_loaded_profile_refits_its_steps_from_the_probe(mini, tmp_path):
    from edgeprune.profiling.table import fit_step

    # the probe of an older file (ONNX Runtime, AVX-512 host, 32..48 input channels) stored a
    # 4-tile staircase of height 2.29, which prices 44 channels at 1.72 steps (measured: 1.07);
    # loading refits it with this edgeprune's fit_step (irregular: the measured shares)
    _, prof = mini
    ms = [0.17197, 0.251138, 0.257627, 0.265418, 0.255044, 0.279875, 0.287982, 0.295273, 0.255709,
          0.313791, 0.322899, 0.326905, 0.260176, 0.341998, 0.349148, 0.354731, 0.254638]
    path = prof.save(tmp_path / "p.json")
    stale = [0.0, *(round(2.2941 * math.ceil(d / 4) * 4 / 16, 4) for d in range(1, 16)), 1.0]
    _edit(path, lambda d: d["steps"]["conv:k1x1"]["c_in"].update(
        measured_ms=ms, share=stale, step=4, height=2.2941, irregular=False))
    st = LatencyProfile.load(path).steps["conv:k1x1"]["c_in"]
    assert st["irregular"] and st["step"] is None
    assert st["share"][12] == pytest.approx(1.067, abs=1e-3) and st["share"] != stale
    # the first step is refitted from its own probe too
    _edit(path, lambda d: d["steps"]["conv:k1x1"]["c_in"]["first"].update(
        measured_ms=[0.0, *ms[1:]], share=stale, step=4, height=2.2941, irregular=False))
    first = LatencyProfile.load(path).steps["conv:k1x1"]["c_in"]["first"]
    assert first["share"] != stale and first["share"] == pytest.approx(
        fit_step(0.0, ms[1:-1], ms[-1])["share"])


def test_each_kernel_takes_its_own_step_and_a_file_keyed_by_kind_prices_all_with_one(mini):
    """ONNX Runtime ran a 1x1 conv reading 8 or 12 channels at 1.4-1.7x what the 3x3 probe's
    first step priced (docs/profiles.md), so steps are measured per kernel: the 1x1 conv takes
    conv:k1x1's share, the 3x3 stem conv:k3x3's. A file from before keys them by kind alone
    ("conv") and prices every conv with that one probe, as it did."""
    _, measured = mini
    r = measured.target.round_to
    assert r == 16
    # tables that grow with both widths (a measured 1x1 conv on ONNX Runtime can time 4 output
    # channels above 16: NCHWc pads), so the readings below differ whatever this host timed
    prof = dataclasses.replace(measured, tables={
        sig: dataclasses.replace(t, latency_ms=tuple(tuple(1e-3 * (ci + 1) * (co + 1) for co in t.c_out)
                                                     for ci in t.c_in))
        for sig, t in measured.tables.items()})
    # first-step shares: equal up to the thin width (4), apart at 8 channels
    flat = [0.0, *[0.25] * 8, *[0.5] * 7, 1.0]
    steep = [0.0, *[0.25] * 4, *[0.75] * 11, 1.0]

    def with_first(steps, shares):
        return dataclasses.replace(prof, steps={k: {a: {**st, "first": {**st["first"], "share": shares[k]}}
                                                    for a, st in axes.items()} for k, axes in steps.items()})

    units = {u.path: u for u in prof.units(randomize_bn(TinyNet(width=32)))}
    pw, stem = units["pw.0"], units["stem.0"]

    def at8(p, u, steep_share):
        thin, full = p.layer_ms(u, u.c_in, 4), p.layer_ms(u, u.c_in, r)
        return thin + (0.5 / 0.75) * (full - thin) if steep_share else thin

    rest = {k: flat for k in prof.steps}
    split = with_first(prof.steps, {**rest, "conv:k1x1": steep})
    assert split.layer_ms(pw, pw.c_in, 8) == pytest.approx(at8(split, pw, True))
    assert split.layer_ms(stem, stem.c_in, 8) == pytest.approx(at8(split, stem, False))
    swapped = with_first(prof.steps, {**rest, "conv:k3x3": steep})
    assert swapped.layer_ms(pw, pw.c_in, 8) == pytest.approx(at8(swapped, pw, False))
    assert swapped.layer_ms(stem, stem.c_in, 8) == pytest.approx(at8(swapped, stem, True))
    assert at8(split, pw, True) > at8(split, pw, False)  # the two readings differ
    # a file keyed by kind: both convs take the one "conv" step
    by_kind = {k: v for k, v in prof.steps.items() if not k.startswith("conv:")} | {"conv": prof.steps["conv:k1x1"]}
    old = with_first(by_kind, {**{k: flat for k in by_kind}, "conv": steep})
    assert old.layer_ms(pw, pw.c_in, 8) == pytest.approx(at8(old, pw, True))
    assert old.layer_ms(stem, stem.c_in, 8) == pytest.approx(at8(old, stem, True))


def test_an_off_grid_width_costs_what_the_runtime_computes(mini):
    """Width 20 on a runtime that computes 16 channels at a time costs what 32 costs; on one
    without steps it is the straight line between 16 and 32 (the old interpolation)."""
    _, prof = mini
    assert prof.target.round_to == 16
    off, up = randomize_bn(TinyNet(width=20)), randomize_bn(TinyNet(width=32))
    assert _with_steps(prof, 16).predict_ms(off) == pytest.approx(_with_steps(prof, 16).predict_ms(up))
    line = _with_steps(prof, 1)
    lo = line.predict_ms(randomize_bn(TinyNet(width=16)))
    assert line.predict_ms(off) < _with_steps(prof, 16).predict_ms(off)
    assert lo < line.predict_ms(off) < line.predict_ms(up)


def test_a_width_below_round_to_pays_the_first_steps_share(mini):
    """Below one round_to step a runtime may take other kernels than past it (XNNPACK's 3x3
    conv on this project's AVX2 host: 8 output channels cost 0.6 of 16, 12 cost 1.2 of 16), so
    widths 1..round_to-1 take the first step's own probe, between zero channels, the width
    measured at round_to / 4 and round_to (or, costlier than round_to, from round_to); a file
    without it refuses them."""
    _, prof = mini
    r = prof.target.round_to
    first = [0.0, *[0.6] * 8, *[1.2] * 7, 1.0]
    p = dataclasses.replace(prof, steps={k: {a: {**st, "first": {**st["first"], "share": first}}
                                             for a, st in axes.items()} for k, axes in prof.steps.items()})
    u = next(u for u in p.units(randomize_bn(TinyNet(width=32)))
             if u.kind == "conv" and not u.fixed_out and r in p.tables[u.signature].c_out)
    assert r // 4 in p.tables[u.signature].c_out
    full, thin = p.layer_ms(u, u.c_in, r), p.layer_ms(u, u.c_in, r // 4)
    assert p.layer_ms(u, u.c_in, 8) == pytest.approx(thin)  # the tile the thin width fills
    # costlier than round_to: round_to's cost times the probe's ratio, not a line through the
    # table's two points extrapolated past round_to (it went below zero where the table's thin
    # width cost more than round_to)
    assert p.layer_ms(u, u.c_in, 12) == pytest.approx(1.2 * full)
    assert p.layer_ms(u, u.c_in, 2) == pytest.approx(thin)  # 0.6 of the step from zero, as 4 is
    assert p.layer_ms(u, u.c_in, r + 8) == pytest.approx(prof.layer_ms(u, u.c_in, r + 8))  # past it: the step probe
    old = dataclasses.replace(prof, steps={k: {a: {x: v for x, v in st.items() if x != "first"}
                                               for a, st in axes.items()} for k, axes in prof.steps.items()})
    with pytest.raises(ProfileError, match=f"c_out=8, off the profile's {r}-channel grid.*first step.*re-profile"):
        old.layer_ms(u, u.c_in, 8)
    assert old.layer_ms(u, u.c_in, r + 4) == prof.layer_ms(u, u.c_in, r + 4)


def test_a_profile_without_steps_refuses_off_grid_widths(mini):
    _, prof = mini
    old = dataclasses.replace(prof, steps=None)  # a file written before steps were measured
    assert old.predict_ms(randomize_bn(TinyNet(width=16))) > 0  # on the grid: fine
    with pytest.raises(ProfileError, match="stem.0.*c_out=20, off the profile's 16-channel grid.*re-profile"):
        old.predict_ms(randomize_bn(TinyNet(width=20)))


def test_pruned_variant_predicts_less(mini):
    from edgeprune.graph import group_structure, shrink_to_widths

    model, prof = mini
    x = torch.zeros(1, *SHAPE)
    small = shrink_to_widths(model, x, {g.name: 8 for g in group_structure(model, x)})
    assert prof.predict_ms(small) < prof.predict_ms(model)


def test_reprofiling_with_cache_measures_no_layer_points(mini, monkeypatch):
    model, prof = mini
    calls = []
    real = measure_mod.convert_for

    def counting(m, t, path, x, fast=False):
        calls.append(fast)
        return real(m, t, path, x, fast=fast)

    monkeypatch.setattr("edgeprune.profiling.latency.convert_for", counting)
    again = profile(model, target=prof.target, input_shape=SHAPE, max_points=2, cache=prof)
    # only the overhead probe (fast) is converted: the four end-to-end calibration networks
    # come from the layer cache the first profile filled
    assert calls.count(True) == 1 and calls.count(False) == 0
    assert again.build["calibrations_from_cache"] == 4
    assert again.tables == prof.tables
    assert [c["keep"] for c in again.calibration] == [c["keep"] for c in prof.calibration]


def test_cache_from_another_target_is_refused(mini):
    model, prof = mini
    other = "host-litert" if prof.target.name == "host-onnxruntime" else "host-onnxruntime"
    with pytest.raises(ProfileError, match="cannot seed"):
        profile(model, target=other, input_shape=SHAPE, cache=prof)


def test_failed_measurement_raises(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(RuntimeAdapterError):
        measure(bad, target="host-onnxruntime")
    with pytest.raises(ProfileError, match="does not exist"):
        measure(tmp_path / "none.onnx", target="host-onnxruntime")
    with pytest.raises(ConfigError, match="not a .tflite"):
        measure(bad, target="host-litert")


def test_timing_that_produces_no_number_raises(tmp_path, monkeypatch):
    import time

    from edgeprune import convert

    path = convert.to_onnx(TinyNet(), tmp_path / "m.onnx", torch.zeros(1, *SHAPE))
    monkeypatch.setattr(time, "perf_counter_ns", lambda: 0)  # a broken clock: 0 ms runs
    with pytest.raises(RuntimeAdapterError, match="invalid samples"):
        measure(path, target="host-onnxruntime")


@pytest.mark.parametrize("target, msg", [
    ("macs", "analytical"),
    ("raspberry-pi-4-litert", r"\$EDGEPRUNE_PI4_TOKEN, which is not set"),  # a device: its token first
    ("arm64-emulated", "runs under emulation"),
    ("iphone-coreml", "CoreML timing needs Apple hardware"),
])
def test_unmeasurable_targets(target, msg, monkeypatch):
    monkeypatch.delenv("EDGEPRUNE_PI4_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=msg):
        measure(TinyNet(), target=target, input_shape=SHAPE)


def test_int8_target_measures_int8_artifacts_only(tmp_path):
    from edgeprune import convert

    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.zeros(1, *SHAPE)
    q = convert.to_tflite_int8(model, tmp_path / "q.tflite", x, [torch.randn(16, *SHAPE)], min_images=16)
    f = convert.to_tflite(model, tmp_path / "f.tflite", x)
    st = measure(q, target="host-litert-int8")
    assert st.median_ms > 0 and st.passes == load_target("host-litert-int8").measure.passes
    with pytest.raises(ConfigError, match="is an fp32 model but target 'host-litert-int8'"):
        measure(f, target="host-litert-int8")
    with pytest.raises(ConfigError, match="is an int8 model but target 'host-litert'"):
        measure(q, target="host-litert")


def test_the_profile_verb_is_a_plain_function_and_refuses_an_analytical_target():
    import inspect

    import edgeprune
    from edgeprune import api

    assert inspect.isfunction(edgeprune.profile) and edgeprune.profile is api.profile
    with pytest.raises(ConfigError, match="analytical"):
        edgeprune.profile(TinyNet(), target="macs", input_shape=SHAPE)


def test_profile_reports_progress_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = TinyNet(width=16).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    prof = profile(model, target="host-onnxruntime", input_shape=SHAPE, max_points=2, on_progress=seen.append)
    assert model.training  # not switched to eval
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    points = sum(t.points() for t in prof.tables.values())
    passes = prof.target.measure.passes
    assert [p.step for p in seen] == list(range(1, len(seen) + 1))
    # probe + the points not in the layer cache converted, then all points timed in passes;
    # four calibrations converted and timed
    converted, timed = prof.build["points_converted"], prof.build["points_timed"]
    assert converted + prof.build["points_from_layer_cache"] == timed
    assert points < timed <= points + prof.build["probe_points"]  # the step probes are timed too
    # the probe points are timed in PROBE_ROUNDS - 1 more rounds (with the overhead probe)
    rounds = prof.build["probe_rounds"]
    assert rounds == PROBE_ROUNDS >= 3
    assert seen[-1].step == seen[-1].total == 1 + converted + passes * (1 + timed) \
        + (rounds - 1) * passes * (1 + prof.build["probe_points"]) + 4 * (1 + passes)
    assert all(len(c["pass_medians_ms"]) == passes for c in prof.calibration)
    assert prof.build["calibration_rounds"] == CALIBRATION_ROUNDS


def test_artifacts_are_timed_in_interleaved_passes_reporting_the_fastest(monkeypatch):
    from edgeprune import runtimes
    from edgeprune.types import LatencyStats

    class FakeSession:
        input_shape = (1, 3, 4, 4)

        def __init__(self, path):
            self.path = path

    order = []
    medians = {"a": iter([2.0, 1.0, 3.0]), "b": iter([5.0, 6.0, 4.0])}

    def fake_time(sess, x, *, warmup, runs):
        order.append(sess.path)
        m = next(medians[sess.path])
        return LatencyStats(m, m, m, 0.0, runs, warmup, "fake", "0", 1)

    monkeypatch.setattr(runtimes, "open_session", lambda p, **kw: FakeSession(p))
    monkeypatch.setattr(runtimes, "time_session", fake_time)
    t = load_target("host-onnxruntime")
    t = dataclasses.replace(t, measure=dataclasses.replace(t.measure, passes=3))
    a, b = measure_mod.time_artifacts(["a", "b"], t)
    assert order == ["a", "b"] * t.measure.passes == ["a", "b"] * 3  # interleaved, not a,a,a,b,b,b
    assert (a.median_ms, a.pass_medians_ms, a.passes) == (1.0, (2.0, 1.0, 3.0), 3)
    assert (b.median_ms, b.pass_medians_ms) == (4.0, (5.0, 6.0, 4.0))
    assert b.pass_spread == pytest.approx(0.5)
    assert "fastest of 3 passes" in str(a) and a.to_dict()["pass_medians_ms"] == [2.0, 1.0, 3.0]


def test_spread_timing_runs_the_protocols_passes_in_rounds_keeping_each_fastest(monkeypatch):
    """A profile's calibrations are timed in rounds spread over the build: 7 passes as 3 + 2 +
    2, each round a call of its own (other timing may run between), each artifact's fastest
    pass of all rounds kept with every pass median; a slow round does not set the result."""
    from edgeprune import runtimes
    from edgeprune.types import LatencyStats

    medians = {"a": iter([9.0, 9.0, 9.0, 2.0, 3.0, 5.0, 4.0]), "b": iter([8.0, 7.0, 9.0, 6.0, 6.5, 1.5, 2.5])}
    order = []

    def fake_time(sess, x, *, warmup, runs):
        order.append(sess)
        m = next(medians[sess])
        return LatencyStats(m, m, m, 0.0, runs, warmup, "fake", "0", 1)

    class Sess(str):
        input_shape = (1, 2)

    monkeypatch.setattr(runtimes, "open_session", lambda p, **kw: Sess(p))
    monkeypatch.setattr(runtimes, "time_session", fake_time)
    t = load_target("host-onnxruntime")
    t = dataclasses.replace(t, measure=dataclasses.replace(t.measure, passes=7, pass_interval_s=0.0))
    spread = measure_mod.SpreadTiming(["a", "b"], t, 3)
    assert spread.todo == [3, 2, 2]
    spread.round()
    assert order == ["a", "b"] * 3
    spread.round()
    assert len(order) == 10
    a, b = spread.result()  # times the last round
    assert len(order) == 14
    assert (a.median_ms, a.passes, a.pass_medians_ms) == (2.0, 7, (9.0, 9.0, 9.0, 2.0, 3.0, 5.0, 4.0))
    assert (b.median_ms, b.passes) == (1.5, 7)
    spread.round()  # every pass timed: nothing more
    assert len(order) == 14
    assert measure_mod.SpreadTiming(["a"], dataclasses.replace(
        t, measure=dataclasses.replace(t.measure, passes=2)), 3).todo == [1, 1]
    with pytest.raises(ValueError, match="passes=0"):
        measure_mod.time_artifacts(["a"], t, passes=0)
    with pytest.raises(ValueError, match="rounds=0"):
        measure_mod.SpreadTiming(["a"], t, 0)


def test_a_short_measurement_spaces_its_passes_by_the_targets_interval(monkeypatch):
    """Passes that would run back to back wait for ``pass_interval_s``: the passes of a short
    measurement must not all fall within one slow spell of the machine."""
    from edgeprune import runtimes
    from edgeprune.types import LatencyStats

    starts = []

    def fake_time(sess, x, *, warmup, runs):
        starts.append(measure_mod.time.monotonic())
        return LatencyStats(1.0, 1.0, 1.0, 0.0, runs, warmup, "fake", "0", 1)

    monkeypatch.setattr(runtimes, "open_session", lambda p, **kw: type("S", (), {"input_shape": (1, 2)})())
    monkeypatch.setattr(runtimes, "time_session", fake_time)
    t = load_target("host-onnxruntime")
    t = dataclasses.replace(t, measure=dataclasses.replace(t.measure, passes=3, pass_interval_s=0.2))
    measure_mod.time_artifacts(["a", "b"], t)
    assert len(starts) == 6
    assert starts[2] - starts[0] >= 0.2 and starts[4] - starts[2] >= 0.2  # each artifact's passes
    assert starts[1] - starts[0] < 0.2  # within a pass, no wait between artifacts
    starts.clear()
    measure_mod.time_artifacts(["a"], dataclasses.replace(t, measure=dataclasses.replace(t.measure, pass_interval_s=0.0)))
    assert starts[-1] - starts[0] < 0.2  # no interval: back to back


def test_time_rounds_takes_each_artifacts_median_over_runs(monkeypatch):
    from edgeprune.targets import load_target
    from edgeprune.types import LatencyStats

    runs = {0: [1.0, 10.0], 1: [3.0, 30.0], 2: [2.0, 50.0]}  # per seed: artifact a, artifact b
    seeds = []

    def fake(paths, target, *, seed=0):
        seeds.append(seed)
        return [LatencyStats(m, m, m, 0.0, 1, 1, "fake", "0", 1) for m in runs[seed]]

    monkeypatch.setattr(measure_mod, "time_artifacts", fake)
    medians, per_round = measure_mod.time_rounds(["a", "b"], load_target("host-onnxruntime"), 3)
    assert seeds == [0, 1, 2] and per_round == [runs[0], runs[1], runs[2]]
    assert medians == [2.0, 30.0]


def test_dense_copy_keeps_zero_init_branches_in_the_converted_graph(tmp_path):
    from edgeprune import convert
    from edgeprune.profiling.latency import dense_copy

    fresh = models.create("resnet20")
    with torch.no_grad():  # zero-gamma residual branches (zero-init, or gates driven to zero)
        for block in (*fresh.layer1, *fresh.layer2, *fresh.layer3):
            block.bn2.weight.zero_()
    x = torch.zeros(1, 3, 32, 32)
    folded = convert.tflite_op_names(convert.to_tflite(fresh, tmp_path / "fresh.tflite", x))
    dense = dense_copy(fresh)
    kept = convert.tflite_op_names(convert.to_tflite(dense, tmp_path / "dense.tflite", x))
    # 19 3x3 convs + 2 projection shortcuts; zero branches are folded away by the converter
    assert kept.count("CONV_2D") == 21
    assert folded.count("CONV_2D") < 21
    assert float(fresh.layer1[0].bn2.weight.abs().sum()) == 0.0  # the original is untouched
    assert torch.equal(dense.layer1[0].bn2.weight, torch.ones(16))


def test_every_model_is_calibrated_at_a_quarter_of_round_to_too(mini):
    """The fit ends at the thinnest networks a user may bring (another tool's pruning at 4
    channels): the last calibration has every group at round_to / 4 channels, its layers
    priced below round_to by the first-step probe, and is predicted as its row says. (TinyNet
    is one channel group: no copies with every other group thinned.)"""
    from edgeprune.graph import group_structure, shrink_to_widths

    model, prof = mini
    row = prof.calibration[-1]
    r = prof.target.round_to
    assert row["keep"] is None and row["width"] == r // 4 and row["blocks_removed"] == 0
    x = torch.zeros(1, *SHAPE)
    groups = group_structure(model, x)
    assert len(groups) == 1 and not any("alternate" in c for c in prof.calibration)
    thin = shrink_to_widths(model, x, {g.name: r // 4 for g in groups})
    assert prof.predict_ms(thin) == pytest.approx(row["predicted_ms"], rel=1e-9)
    assert row["measured_ms"] > 0 and f"{r // 4} channels per group" in str(prof)


def test_a_model_whose_thinnest_copy_is_above_the_channel_floor_is_calibrated_at_the_floor_too():
    """keep 0.3 of 96 channels is 32, not the floor of 16: without a row at the floor the
    intercept came from wide copies alone (VGG-Small's floor network was predicted below
    zero); the floor copy is a calibration, predicted as its row says. At 32 channels (the
    other tests' TinyNet) keep 0.3 is the floor, and there is no extra row."""
    from edgeprune.graph import group_structure, shrink_to_widths

    torch.manual_seed(0)
    model = randomize_bn(TinyNet(width=96))
    prof = profile(model, target="host-onnxruntime", input_shape=SHAPE, max_points=2)
    r = prof.target.round_to
    assert [(c["keep"], c.get("width")) for c in prof.calibration] == [
        (1.0, None), (0.6, None), (0.3, None), (None, r), (None, r // 4)]
    x = torch.zeros(1, *SHAPE)
    floor = shrink_to_widths(model, x, {g.name: r for g in group_structure(model, x)})
    row = prof.calibration[3]
    assert prof.predict_ms(floor) == pytest.approx(row["predicted_ms"], rel=1e-9)
    assert row["measured_ms"] > 0 and row["narrow_ms"] == 0 and f"{r} channels per group" in str(prof)


def test_layers_below_round_to_are_priced_with_the_narrow_scale(mini):
    """The thin copy's layers (every group at round_to / 4) take ``narrow_scale``, the full
    model's ``layer_scale``: changing one scale moves only the predictions that use it. A
    profile written before the narrow scale (no such key) prices every layer with one scale."""
    import dataclasses

    from edgeprune.graph import group_structure, shrink_to_widths

    model, prof = mini
    x = torch.zeros(1, *SHAPE)
    thin = shrink_to_widths(model, x, {g.name: prof.target.round_to // 4 for g in group_structure(model, x)})
    assert prof.narrow_scale is not None and prof.narrow_scale > 0
    other = dataclasses.replace(prof, narrow_scale=2 * prof.narrow_scale)
    assert other.predict_ms(model) == pytest.approx(prof.predict_ms(model), rel=1e-12)
    extra = other.predict_ms(thin) - prof.predict_ms(thin)
    # every prunable output of the thin copy is below round_to: all those layers move (the
    # classifier only reads a narrow input, and keeps layer_scale)
    narrow = sum(prof.layer_ms(u) for u in prof.units(thin) if not u.fixed_out)
    assert extra == pytest.approx(prof.narrow_scale * narrow, rel=1e-9) and extra > 0
    assert sum(other.breakdown(thin).values()) == pytest.approx(other.predict_ms(thin))
    assert f"x {prof.narrow_scale:.4f}" in str(prof)
    d = prof.to_dict()
    assert LatencyProfile.from_dict(d).narrow_scale == prof.narrow_scale
    del d["remainder"]["narrow_scale"]
    old = LatencyProfile.from_dict(d)
    assert old.narrow_scale is None
    units = old.units(thin)
    one_scale = old.layer_scale * sum(old.layer_ms(u) for u in units) + old.remainder_intercept_ms
    assert old.predict_ms(thin) == pytest.approx(one_scale, rel=1e-12)


def test_only_a_narrow_output_makes_a_layer_narrow():
    """A layer is priced with ``narrow_scale`` when its prunable output is below round_to: the
    runtime's extra work follows a narrow output (ONNX Runtime's reorder to NCHW). A layer that
    only reads a narrow input (a block's second conv, a classifier) keeps ``layer_scale``: its
    narrow-input kernel is in its own table point."""
    from edgeprune.graph.layers import LayerUnit
    from edgeprune.profiling.latency import _narrow

    conv = LayerUnit("c", "conv", "sig", 16, 16, (8, 8), (8, 8), (3, 3))
    assert _narrow(conv, 4, 16) and _narrow(conv, 15, 16)
    assert not _narrow(conv, 16, 16) and not _narrow(conv, 20, 16)
    head = LayerUnit("fc", "linear", "sig", 4, 10, (1, 1), (1, 1), fixed_out=True)
    assert not _narrow(head, 10, 16)  # a fixed class count is never pruned
    stem = LayerUnit("s", "conv", "sig", 3, 16, (8, 8), (8, 8), (3, 3), fixed_in=True)
    assert _narrow(stem, 8, 16)


def test_remainder_fit_recovers_scale_and_intercept_golden():
    from edgeprune.profiling.latency import _fit_remainder

    calib = [{"layers_ms": v, "measured_ms": 1.1 * v - 0.05} for v in (2.0, 1.0, 0.4)]
    intercept, scale, narrow_scale = _fit_remainder(calib)
    assert scale == pytest.approx(1.1) and intercept == pytest.approx(-0.05)
    assert narrow_scale == scale  # no calibration has layers below round_to: one scale
    # a non-positive scale would price wider layers as free: refused, gap kept as intercept
    broken = [{"layers_ms": v, "measured_ms": m} for v, m in ((2.0, 1.0), (1.0, 1.5), (0.4, 1.8))]
    intercept, scale, narrow_scale = _fit_remainder(broken)
    assert scale == 1.0 == narrow_scale and intercept == pytest.approx((-1.0 + 0.5 + 1.4) / 3)


def test_remainder_fit_gives_narrow_layers_their_own_scale_golden():
    """Layers below round_to run 1.3x slower in the network than the grid-width ones (as ONNX
    Runtime's reorders make them): the thin calibration's row recovers that scale, the grid
    rows the other, and the intercept stays; one shared scale misses the thin copy by 18%."""
    from edgeprune.profiling.latency import _fit_remainder

    rows = [(2.0, 0.0), (1.0, 0.0), (0.4, 0.0), (0.3, 0.3), (0.2, 0.02)]  # (layers, of them narrow)
    calib = [{"layers_ms": t, "narrow_ms": n, "measured_ms": 1.1 * (t - n) + 1.43 * n + 0.01} for t, n in rows]
    intercept, scale, narrow_scale = _fit_remainder(calib)
    assert (intercept, scale, narrow_scale) == pytest.approx((0.01, 1.1, 1.43))
    shared = _fit_remainder([{k: v for k, v in c.items() if k != "narrow_ms"} for c in calib])
    thin = calib[3]
    assert shared[1] == shared[2] and (shared[1] * thin["layers_ms"] + shared[0]) / thin["measured_ms"] < 0.85
    # a three-term fit that prices narrow layers below grid ones (the intercept traded against
    # them) or at <= 0 is not used: one scale again
    for thin_ms in (0.001, 0.3):
        bad = [dict(c) for c in calib]
        bad[3]["measured_ms"] = thin_ms
        intercept, scale, narrow_scale = _fit_remainder(bad)
        assert scale == narrow_scale > 0


def test_copies_with_every_other_group_narrow_refit_the_narrow_scale_alone():
    """The copies mixing narrow and wide groups (``alternate``) change narrow_scale and
    nothing else: intercept and scale come from the uniform copies, so networks on the grid
    are priced as without them. Their narrow layers at 1.2x and the thin copy's at 1.43x give
    one scale between the two; mixed copies whose narrow layers run below the grid scale
    leave narrow_scale at the grid scale (never cheaper)."""
    from edgeprune.profiling.latency import _fit_remainder

    def row(t, n, narrow_scale, **kw):
        return {"layers_ms": t, "narrow_ms": n, "measured_ms": 1.1 * (t - n) + narrow_scale * n + 0.01, **kw}

    calib = [row(t, n, 1.43) for t, n in ((2.0, 0.0), (1.0, 0.0), (0.4, 0.0), (0.3, 0.3))]
    base = _fit_remainder(calib)
    assert base == pytest.approx((0.01, 1.1, 1.43))
    mixed = [row(1.2, 0.2, 1.2, alternate=0), row(0.9, 0.1, 1.2, alternate=1)]
    intercept, scale, narrow_scale = _fit_remainder(calib + mixed)
    assert (intercept, scale) == pytest.approx(base[:2]) and 1.2 < narrow_scale < 1.43
    cheap = [row(1.0, 0.9, 0.2, alternate=0), row(0.8, 0.7, 0.2, alternate=1)]
    assert _fit_remainder(calib + cheap) == pytest.approx((0.01, 1.1, 1.1))


def test_remainder_fit_weighs_relative_error():
    """Calibrations that no line fits exactly (1 ms down to a thin copy at 0.1 ms): the fit
    minimises relative error, so the thin row is not sacrificed to the full one's absolute
    size (an absolute least squares misses it by 9% here, this fit by 2%)."""
    from edgeprune.profiling.latency import _fit_remainder

    calib = [{"layers_ms": v, "measured_ms": m} for v, m in ((1.0, 1.0), (0.5, 0.55), (0.3, 0.3), (0.05, 0.1))]

    def rel_errors(intercept, scale):
        return np.array([(scale * c["layers_ms"] + intercept) / c["measured_ms"] - 1 for c in calib])

    a = np.array([[1.0, c["layers_ms"]] for c in calib])
    b = np.array([c["measured_ms"] for c in calib])
    absolute = rel_errors(*np.linalg.lstsq(a, b, rcond=None)[0])
    fitted = rel_errors(*_fit_remainder(calib)[:2])
    assert abs(absolute[-1]) > 0.08 and abs(fitted[-1]) < 0.03
    assert (fitted ** 2).sum() < (absolute ** 2).sum()


def test_prediction_is_scaled_tables_plus_intercept(mini):
    model, prof = mini
    units = prof.units(model)
    tables = sum(prof.layer_ms(u) for u in units)
    assert prof.predict_ms(model) == pytest.approx(prof.layer_scale * tables + prof.remainder_intercept_ms)
    parts = prof.breakdown(model)
    assert sum(parts.values()) == pytest.approx(prof.predict_ms(model))
    assert prof.layer_scale > 0


def test_a_plain_script_without_main_guard_can_profile(tmp_path):
    """Converter workers are `python -m` processes: nothing re-imports the caller's script
    (a spawn pool would run it again in each worker, and die with BrokenProcessPool). Widths
    32 with round_to 16 give 8 grid points, enough for the two workers to start."""
    import subprocess
    import sys

    script = tmp_path / "plain.py"
    script.write_text(
        "import torch\n"
        "from torch import nn\n"
        "import edgeprune\n"
        "print('script body ran')\n"
        "model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
        "                      nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
        "                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()\n"
        "prof = edgeprune.profile(model, target='host-litert', input_shape=(3, 16, 16), max_points=2,\n"
        "                         workers=2)\n"
        "print('predicted', prof.predict_ms(model) > 0)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("script body ran") == 1, proc.stdout
    assert "predicted True" in proc.stdout


def test_the_layer_cache_converts_each_point_once_and_is_really_read(tmp_path):
    """A second profile (here of another model with the same layers) converts nothing and
    times the cached files: a cached file made unreadable is an error that names it."""
    from edgeprune.errors import EdgepruneError

    torch.manual_seed(0)
    cache = tmp_path / "layers"
    first = profile(randomize_bn(TinyNet(width=32)), target="host-onnxruntime", input_shape=SHAPE,
                    max_points=2, layer_cache=cache)
    n = first.build["points_converted"]
    assert n == first.build["points_timed"] and first.build["points_from_layer_cache"] == 0
    files = sorted(cache.glob("onnxruntime-fp32/*.onnx"))
    assert len(files) == n
    # the four calibration networks, one file per distinct network (keep 0.6 and 0.3 of 32
    # channels both round to 16: one network, converted once, its file reused the same build)
    networks = list(cache.glob("networks-onnxruntime-fp32/*.onnx"))
    assert len(networks) == 3 and first.build["calibrations_from_cache"] == 1
    second = profile(randomize_bn(TinyNet(width=32), seed=1), target="host-onnxruntime",
                     input_shape=SHAPE, max_points=2, layer_cache=cache)
    assert (second.build["points_converted"], second.build["points_from_layer_cache"]) == (0, n)
    assert second.build["calibrations_from_cache"] == 4  # other weights, the same networks
    assert second.build["convert_s"] >= 0 and second.build["measure_s"] > 0
    assert {s: (t.c_in, t.c_out) for s, t in second.tables.items()} == \
        {s: (t.c_in, t.c_out) for s, t in first.tables.items()}
    files[0].write_bytes(b"not a model")
    with pytest.raises(EdgepruneError, match=files[0].name):
        profile(TinyNet(width=32), target="host-onnxruntime", input_shape=SHAPE, max_points=2,
                layer_cache=cache)
    nothing = profile(TinyNet(width=32), target="host-onnxruntime", input_shape=SHAPE, max_points=2,
                      layer_cache=False)
    assert nothing.build["points_converted"] == n


def test_a_network_key_follows_what_the_converted_file_depends_on():
    """Same architecture, other weights: the same key (latency does not read the values).
    A zeroed BatchNorm (converters delete provably-zero work), another stride, another input
    size or another op: another key. A model torch.fx cannot trace has none (converted every
    time)."""
    from edgeprune.profiling.cache import network_key

    torch.manual_seed(0)
    a, b = randomize_bn(TinyNet(width=32)), randomize_bn(TinyNet(width=32), seed=1)
    assert network_key(a, SHAPE) == network_key(b, SHAPE) is not None
    assert network_key(a, (3, 16, 16)) != network_key(a, SHAPE)
    zeroed = randomize_bn(TinyNet(width=32))
    bn = next(m for m in zeroed.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.nn.init.zeros_(bn.weight)
    assert network_key(zeroed, SHAPE) != network_key(a, SHAPE)
    strided = randomize_bn(TinyNet(width=32))
    conv = next(m for m in strided.modules() if isinstance(m, torch.nn.Conv2d))
    conv.stride = (2, 2)
    assert network_key(strided, SHAPE) != network_key(a, SHAPE)

    class Gelu(TinyNet):
        def forward(self, x):
            return torch.nn.functional.gelu(super().forward(x))

    assert network_key(randomize_bn(Gelu(width=32)), SHAPE) != network_key(a, SHAPE)

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent: fx cannot trace it

    assert network_key(Branchy(), SHAPE) is None


def test_layer_cache_keys_separate_what_changes_the_file():
    from edgeprune.profiling.cache import LayerCache
    from edgeprune.targets import load_target

    c = LayerCache("/nonexistent")
    lit, q, ort = (load_target(n) for n in ("host-litert", "host-litert-int8", "host-onnxruntime"))
    pi = load_target("raspberry-pi-4-litert")  # another device, same runtime and precision
    sig = "conv:k3x3:s1x1:p1x1:d1x1:in32x32"
    keys = {c.key(sig, 16, 32, t) for t in (lit, q, ort)} | {c.key(sig, 16, 48, lit), c.key(sig, 32, 32, lit),
                                                            c.key(sig.replace("in32", "in16"), 16, 32, lit)}
    assert len(keys) == 6
    assert c.key(sig, 16, 32, pi) == c.key(sig, 16, 32, lit)


def test_timing_cpus_pin_the_timing_loop_and_restore_the_affinity(tmp_path, monkeypatch):
    import os

    from edgeprune import convert, runtimes
    from edgeprune.profiling.measurement import TIMING_CPUS_ENV, time_artifact
    from edgeprune.targets import load_target

    path = convert.to_onnx(TinyNet(), tmp_path / "m.onnx", torch.zeros(1, *SHAPE))
    before = os.sched_getaffinity(0)
    cpu = max(before)
    seen = []
    real = runtimes.time_session
    monkeypatch.setattr(runtimes, "time_session",
                        lambda *a, **k: (seen.append(os.sched_getaffinity(0)), real(*a, **k))[1])
    monkeypatch.setenv(TIMING_CPUS_ENV, str(cpu))
    t = load_target("host-onnxruntime")
    st = time_artifact(path, t)
    assert st.median_ms > 0 and seen == [{cpu}] * t.measure.passes and os.sched_getaffinity(0) == before
    for bad in ("x", "99999"):
        monkeypatch.setenv(TIMING_CPUS_ENV, bad)
        with pytest.raises(ConfigError, match=TIMING_CPUS_ENV):
            time_artifact(path, load_target("host-onnxruntime"))


def test_litert_points_are_derived_from_one_template_per_signature(tmp_path):
    """On a cold layer cache, a LiteRT signature with enough missing points is converted at
    its template widths and at its smallest and largest point, and the other points are
    derived (edgeprune.convert.tflite_resize); each derived signature's check point is also
    timed as a derived twin."""
    torch.manual_seed(0)
    cache = tmp_path / "layers"
    prof = profile(randomize_bn(TinyNet(width=32)), target="host-litert", input_shape=SHAPE,
                   max_points=2, layer_cache=cache)
    b = prof.build
    assert b["points_derived"] > b["points_converted"] > 0 and b["not_derived"] == []
    assert b["points_converted"] + b["points_derived"] + b["points_from_layer_cache"] == b["points_timed"]
    assert len(b["derived_check"]) == b["templates_converted"] >= 2  # the probed conv and dwconv
    assert all(c["converted_ms"] > 0 and c["derived_ms"] > 0 for c in b["derived_check"])
    # every timed point and every template is kept; a warm build derives nothing
    assert len(list(cache.glob("litert-fp32/*.tflite"))) == b["points_timed"] + b["templates_converted"]
    again = profile(randomize_bn(TinyNet(width=32)), target="host-litert", input_shape=SHAPE,
                    max_points=2, layer_cache=cache)
    assert (again.build["points_derived"], again.build["points_converted"]) == (0, 0)


def test_a_signature_whose_derived_graph_differs_is_converted(tmp_path, monkeypatch):
    from edgeprune.convert import tflite_resize
    from edgeprune.graph.layers import LayerUnit
    from edgeprune.profiling.latency import DERIVE_MIN, _make_points
    from edgeprune.targets import load_target

    u = LayerUnit(path="fc", kind="linear", signature="linear", c_in=64, c_out=10, in_hw=(1, 1),
                  out_hw=(1, 1), kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  fixed_in=False, fixed_out=True)
    jobs = [("linear", u, 8 * (i + 1), 10) for i in range(DERIVE_MIN)]
    seen = iter(range(1000))
    monkeypatch.setattr(tflite_resize, "tflite_structure", lambda path: next(seen))  # never equal
    ticks = []
    made = _make_points(jobs, load_target("host-litert"), tmp_path, 1, None, ticks.append)
    assert made.not_derived == ["linear"] and made.derived == 0 and made.twins == {}
    assert made.converted == DERIVE_MIN and made.templates == 1
    assert sorted(made.paths) == sorted((s, ci, co) for s, _, ci, co in jobs)
    assert all(p.is_file() for p in made.paths.values())
    assert len(ticks) == DERIVE_MIN + 1  # the planned steps: every point and the template


def test_a_state_that_slows_one_probe_round_does_not_move_the_steps(tmp_path, monkeypatch):
    """Each step-probe point is the median of PROBE_ROUNDS timing rounds: a slow state that
    hits half the points of the first round (this project's VMs have put single probe points
    a whole step off) leaves the fitted steps as a clean build has them. Timing is faked from
    the file size (a layer's weights), so both builds see the same numbers but for the state."""
    import os

    from edgeprune.profiling import latency
    from edgeprune.types import LatencyStats

    calls = []

    def fake(paths, target, *, seed=0, on_pass=None, device=None, passes=None, slow=False):
        calls.append(len(paths))
        out = []
        for i, p in enumerate(paths):
            # call 1 is the calibrations' first round, call 2 the points' passes
            ms = 1e-6 * os.path.getsize(p) * (1.5 if slow and len(calls) == 2 and i > len(paths) // 2 else 1.0)
            out.append(LatencyStats(ms, ms, ms, 0.0, 1, 0, "fake", "0", 1))
        for i in range(len(paths)):
            if on_pass is not None:
                on_pass(i + 1, len(paths))
        return out

    def build(slow):
        calls.clear()
        for mod in (latency, measure_mod):  # the extra rounds go through measurement.time_rounds
            monkeypatch.setattr(mod, "time_artifacts", lambda *a, **k: fake(*a, **k, slow=slow))
        return profile(TinyNet(width=32).eval(), target="host-onnxruntime", input_shape=SHAPE, max_points=2,
                       layer_cache=tmp_path / "layers").steps

    clean, hit = build(False), build(True)
    # calibration round, points, calibration round, probe rounds, calibration round
    assert len(calls) == PROBE_ROUNDS + CALIBRATION_ROUNDS and calls[1] == max(calls)
    assert hit == clean
    assert any(st["measured_ms"] != [0.0] * len(st["measured_ms"]) for axes in clean.values()
               for st in axes.values())
