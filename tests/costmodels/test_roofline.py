"""costmodels.roofline and DeviceSpec: hand-computed bounds, presets, the CPU probe."""

import json
import math

import pytest

import archir
import costmodels
from archir import samples
from costmodels import H100_SXM, H200, DeviceSpec, roofline

F32 = 4
TOY = DeviceSpec("toy", peak_flops=1e9, mem_bandwidth=1e9)  # 1 GFLOP/s, 1 GB/s: seconds = count / 1e9


def _conv_relu():
    g = archir.Graph("cr")
    x = g.input("x", shape=(3, 32, 32))
    h = g.add("conv2d", x, out_channels=16, kernel_size=3, padding=1, bias=False, name="c")
    g.set_outputs(g.add("relu", h, name="r"))
    return g


def test_hand_computed_bound():
    r = roofline(_conv_relu(), TOY)
    conv_flops = 2 * 16 * 3 * 9 * 32 * 32                          # 884,736
    conv_bytes = (3 * 1024 + 16 * 1024 + 16 * 3 * 9) * F32          # read x, write y, read w = 79,552
    relu_flops, relu_bytes = 16 * 1024, 2 * 16 * 1024 * F32         # 16,384 and 131,072
    c, rl = r["c"], r["r"]
    assert (c.flops, c.bytes_moved) == (conv_flops, conv_bytes)
    assert c.compute_s == pytest.approx(conv_flops / 1e9) and c.memory_s == pytest.approx(conv_bytes / 1e9)
    assert c.bound == "compute" and c.time_s == c.compute_s
    assert rl.bound == "memory" and rl.time_s == pytest.approx(relu_bytes / 1e9)
    assert rl.intensity == pytest.approx(relu_flops / relu_bytes)
    assert r["x"].bound == "none" and r["x"].time_s == 0
    assert r.time_s == pytest.approx((conv_flops + relu_bytes) / 1e9)
    assert r.compute_s == pytest.approx((conv_flops + relu_flops) / 1e9)
    assert r.memory_s == pytest.approx((conv_bytes + relu_bytes) / 1e9)
    assert r.time_ms == pytest.approx(1e3 * r.time_s)
    assert r.compute_bound == ["c"] and r.memory_bound == ["r"]


def test_big_conv_is_compute_bound_and_relu_memory_bound_on_h100():
    g = archir.Graph("big")
    x = g.input("x", shape=(256, 56, 56))
    h = g.add("conv2d", x, out_channels=256, kernel_size=3, padding=1, bias=False, name="conv")
    g.set_outputs(g.add("relu", h, name="relu"))
    r = roofline(g, H100_SXM)
    # conv: 2 * 256*256*9*3136 FLOP over ~8.8 MB -> ~420 FLOP/byte, above the ridge at 67e12/3.35e12 = 20
    assert r["conv"].intensity > H100_SXM.ridge_point == pytest.approx(20.0)
    assert r.compute_bound == ["conv"] and r.memory_bound == ["relu"]


def test_totals_are_sums_and_bounds():
    r = roofline(samples.resnet_like(), H100_SXM, batch_size=8)
    assert r.time_s == pytest.approx(sum(n.time_s for n in r.nodes.values()))
    assert r.time_s >= max(r.compute_s, r.memory_s)
    assert r.time_s <= r.compute_s + r.memory_s + 1e-18
    non_trivial = [n for n, x in r.nodes.items() if x.bound != "none"]
    assert sorted(r.compute_bound + r.memory_bound) == sorted(non_trivial)
    assert r.batch_size == 8 and r.counts.batch_size == 8
    assert r.counts.flops == sum(n.flops for n in r.nodes.values())
    assert "resnet_like" in r.summary() and "ms" in r.summary()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["device"]["name"] == H100_SXM.name and len(d["nodes"]) == len(r.nodes)


def test_more_bandwidth_never_slower():
    g = samples.mobilenet_like()
    assert roofline(g, H200).time_s <= roofline(g, H100_SXM).time_s
    assert roofline(g, H200).compute_s == pytest.approx(roofline(g, H100_SXM).compute_s)


def test_batch_scales_activation_traffic():
    g = samples.chain()
    r1, r4 = roofline(g, TOY), roofline(g, TOY, batch_size=4)
    assert r4.compute_s == pytest.approx(4 * r1.compute_s)
    assert r1.memory_s < r4.memory_s < 4 * r1.memory_s + 1e-12  # weights are read once per batch


def test_supernet_is_bounded_as_the_sum():
    cands = [{"name": "a", "ops": [{"op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}]},
             {"name": "b", "ops": [{"op": "relu"}]}]
    g = archir.Graph("sup")
    x = g.input("x", shape=(4, 8, 8))
    g.set_outputs(g.add("choice", x, candidates=cands, name="ch"))
    r = roofline(g, TOY)
    assert r["ch"].flops == (2 * 4 * 64 * 4 * 9 + 4 * 64) + 4 * 64


# --------------------------------------------------------------------------- DeviceSpec


def test_presets_carry_published_figures():
    assert H100_SXM.peak_flops == H100_SXM.peak_flops_fp32 == 67e12
    assert H100_SXM.mem_bandwidth == 3.35e12
    assert H100_SXM.peak_flops_tf32 == pytest.approx(494.7e12) and H100_SXM.peak_flops_fp16 == pytest.approx(989.4e12)
    assert H200.peak_flops == 67e12 and H200.mem_bandwidth == 4.8e12
    assert H200.peak_flops_tf32 == H100_SXM.peak_flops_tf32  # same GH100 compute
    assert "nvidia.com" in H100_SXM.source and "nvidia.com" in H200.source
    assert costmodels.PRESETS["h100"] is H100_SXM and costmodels.PRESETS["h200"] is H200
    assert not H100_SXM.measured


def test_with_precision():
    tf32 = H100_SXM.with_precision("tf32")
    assert tf32.peak_flops == pytest.approx(494.7e12) and tf32.name == "NVIDIA H100 SXM5 (tf32)"
    assert tf32.with_precision("fp32").peak_flops == 67e12
    assert roofline(samples.resnet_like(), tf32).compute_s < roofline(samples.resnet_like(), H100_SXM).compute_s
    with pytest.raises(ValueError, match="one of"):
        H100_SXM.with_precision("int4")
    with pytest.raises(ValueError, match="no tf32 peak"):
        TOY.with_precision("tf32")


@pytest.mark.parametrize("kw", [{"peak_flops": 0}, {"peak_flops": -1.0}, {"mem_bandwidth": math.inf},
                                {"mem_bandwidth": float("nan")}, {"peak_flops": "fast"},
                                {"peak_flops_tf32": 0.0}])
def test_device_spec_rejects_bad_figures(kw):
    args = {"name": "bad", "peak_flops": 1e9, "mem_bandwidth": 1e9, **kw}
    with pytest.raises(ValueError, match="positive finite"):
        DeviceSpec(**args)


def test_roofline_needs_a_device_spec():
    with pytest.raises(TypeError, match="DeviceSpec"):
        roofline(samples.chain(), "h100")
    with pytest.raises(ValueError, match="batch_size"):
        roofline(samples.chain(), TOY, batch_size=0)


def test_probe_cpu_is_measured_and_cached():
    cpu = DeviceSpec.probe_cpu(seconds=0.2)
    assert cpu.measured and cpu.name.startswith("cpu: ") and "probed" in cpu.name
    assert math.isfinite(cpu.peak_flops) and cpu.peak_flops > 1e6
    assert math.isfinite(cpu.mem_bandwidth) and cpu.mem_bandwidth > 1e6
    assert DeviceSpec.probe_cpu(seconds=5.0) is cpu  # cached per process: no 5 s probe
    again = DeviceSpec.probe_cpu(seconds=0.1, refresh=True)
    assert again is not cpu and again.measured
    assert roofline(samples.chain(), again).time_s > 0
    with pytest.raises(ValueError, match="seconds"):
        DeviceSpec.probe_cpu(seconds=0)
