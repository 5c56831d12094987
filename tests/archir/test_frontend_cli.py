"""``archir import``: a Python factory or an ONNX file to net.json, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

import archir
from archir import samples
from archir.cli.main import main

MODEL_PY = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    class Cumsum(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)  # archir has no op for it

    def make_model():
        torch.manual_seed(0)
        return Net()

    def make_cumsum():
        return Cumsum()

    def make_nothing():
        return 3

    def make_broken():
        raise RuntimeError("no weights here")
""")


@pytest.fixture
def model_py(tmp_path) -> Path:
    p = tmp_path / "model.py"
    p.write_text(MODEL_PY)
    return p


def test_import_python_factory(model_py, tmp_path, capsys):
    out = tmp_path / "net.json"
    assert main(["import", f"{model_py}:make_model", "-o", str(out), "--input-shape", "3,16,16"]) == 0
    text = capsys.readouterr().out
    assert "imported Net: 7 nodes" in text and "checked against the module" in text
    g = archir.load(out)
    assert [n.op for n in g.nodes()] == ["input", "conv2d", "batchnorm2d", "relu", "global_avgpool", "flatten",
                                         "linear"]
    assert g.node("x").type.shape == (3, 16, 16) and (tmp_path / "net.safetensors").is_file()


def test_import_onnx_file(tmp_path, capsys):
    g = samples.resnet_like()
    onnx.save(archir.lower.to_onnx(g), tmp_path / "net.onnx")
    assert main(["import", str(tmp_path / "net.onnx"), "-o", str(tmp_path / "back.json")]) == 0
    assert "(ONNX;" in capsys.readouterr().out
    g2 = archir.load(tmp_path / "back.json")
    x = torch.randn(2, *g.node(g.inputs[0]).type.shape)
    with torch.no_grad():
        torch.testing.assert_close(archir.lower.to_fx(g2).eval()(x), archir.lower.to_fx(g).eval()(x))


@pytest.mark.parametrize("spec,extra,match,hint", [
    ("{model}:make_missing", ["--input-shape", "3,8,8"], "no function 'make_missing'", "make_cumsum, make_model, make_nothing"),
    ("{dir}/nope.py:make_model", ["--input-shape", "3,8,8"], "nope.py: no such file", "check the path"),
    ("{model}", ["--input-shape", "3,8,8"], "is not FILE.py:FUNCTION", "archir import model.py:make_model"),
    ("{model}:make_model", [], "needs --input-shape", "3,224,224"),
    ("{model}:make_model", ["--input-shape", "3,x,8"], "not a list of positive ints", "3,224,224"),
    ("{model}:make_model", ["--input-shape", "3,0,8"], "not a list of positive ints", "3,224,224"),
    ("{model}:make_nothing", ["--input-shape", "3,8,8"], "returned a int, not a torch.nn.Module", "return the model"),
    ("{model}:make_broken", ["--input-shape", "3,8,8"], "RuntimeError: no weights here", "no arguments"),
    ("{model}:make_cumsum", ["--input-shape", "4,8,8"], "unsupported node", "supported layers"),
    ("{model}:make_model", ["--input-shape", "5,8,8"], "example inputs failed", "shapes the model expects"),
    ("{dir}/missing.onnx", [], "missing.onnx: no such file", "check the path"),
    ("{dir}/syntax.py:f", ["--input-shape", "3,8,8"], "running the file failed: SyntaxError", "fix the error"),
])
def test_bad_input_is_one_line_with_a_hint(model_py, tmp_path, capsys, spec, extra, match, hint):
    (tmp_path / "syntax.py").write_text("def f(:\n")
    src = spec.format(model=model_py, dir=tmp_path)
    out = tmp_path / "out.json"
    assert main(["import", src, "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.splitlines()
    reasons = err[2:]  # an unsupported model: the first node of each kind, with its reason
    assert len(err) == 2 + ("unsupported node" in match) and err[0].startswith("archir: error: ") and match in err[0], err
    assert err[1].startswith("  how to fix: ") and hint in err[1], err
    assert all(r.startswith("  - ") and ": " in r for r in reasons), err
    assert not out.exists()


def test_an_onnx_file_that_does_not_import_gives_each_kind_s_reason(tmp_path, capsys):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
    nodes = [helper.make_node("Cos", ["x"], ["a"], name="cos1"), helper.make_node("Cos", ["a"], ["b"], name="cos2"),
             helper.make_node("Sin", ["b"], ["y"], name="sin1")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "trig.onnx"
    src.write_bytes(model.SerializeToString())
    assert main(["import", str(src), "-o", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "3 unsupported node(s)" in err[0] and err[1].startswith("  how to fix: ")
    assert err[2:4] == ["  - ONNX Cos at cos1: no mapping for this ONNX op", "  - ONNX Sin at sin1: no mapping for this ONNX op"]
    assert "3 node(s) in all" in err[4] and len(err) == 5


def test_output_must_be_json(model_py, tmp_path, capsys):
    assert main(["import", f"{model_py}:make_model", "-o", str(tmp_path / "net.onnx"), "--input-shape", "3,8,8"]) == 2
    assert "must end in .json" in capsys.readouterr().err


def test_entry_point_reports_without_traceback(model_py, tmp_path):
    exe = Path(sys.executable).with_name("archir")
    res = subprocess.run([str(exe), "import", f"{model_py}:make_cumsum", "-o", str(tmp_path / "s.json"),
                          "--input-shape", "4,8,8"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "function torch.cumsum" in res.stderr


# ------------------------------------------------------------------ torchvision families, both exporters

# one torchvision module per representative family, at the families test's settings; each through `archir import`
# from a Python factory (FILE.py:make_model), from torch.onnx.export(dynamo=False) and from dynamo=True
CLI_FAMILIES = ["resnet18", "shufflenet_v2_x0_5", "convnext_tiny", "mobilenet_v3_small", "inception_v3"]

FACTORY_PY = textwrap.dedent("""
    from tests.archir.test_frontend_families import build_torchvision

    def make_model():
        return build_torchvision({family!r})
""")


def _export(m, shape, path, how):
    import logging
    import warnings

    x = torch.randn(2, *shape)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if how == "dynamo":
                pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
                torch.onnx.export(m, (x,), dynamo=True, verbose=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))
            else:
                torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                                  dynamic_axes={"x": {0: "batch"}})
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["factory", "torchscript", "dynamo"])
@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_import_torchvision_family(family, how, tmp_path, capsys):
    pytest.importorskip("torchvision.models")
    from tests.archir.test_frontend_families import TV_FAMILIES, build_torchvision

    shape = TV_FAMILIES[family][2]
    m = build_torchvision(family)
    out = tmp_path / "net.json"
    if how == "factory":
        (tmp_path / "model.py").write_text(FACTORY_PY.format(family=family))
        argv = [f"{tmp_path / 'model.py'}:make_model", "--input-shape", ",".join(map(str, shape))]
    else:
        _export(m, shape, tmp_path / "m.onnx", how)
        argv = [str(tmp_path / "m.onnx")]
    assert main(["import", *argv, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("checked against the module" if how == "factory" else "(ONNX;") in text
    assert out.is_file() and out.with_suffix(".safetensors").is_file()
    g = archir.load(out)
    assert g.node(g.inputs[0]).type.shape == shape
    n = sum(p.numel() for p in m.parameters())
    assert g.num_params() == n if how == "factory" else g.num_params() <= n  # torch's exporters fold BN
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(archir.lower.to_fx(g).eval()(x), m(x), atol=1e-4, rtol=1e-4)


def test_import_onnx_with_dynamic_height_and_width(tmp_path, capsys):
    """An export with dynamic H, W needs its sizes: --input-shape gives them; a misfit is one line with a hint."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    src = tmp_path / "hw.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), str(src), dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    out = tmp_path / "hw.json"
    assert main(["import", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "every dim after the batch must be a fixed size" in err and "--input-shape" in err
    assert main(["import", str(src), "-o", str(out), "--input-shape", "3,12,10"]) == 0
    g = archir.load(out)
    assert g.node(g.inputs[0]).type.shape == (3, 12, 10)
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(archir.lower.to_fx(g).eval()(x), m(x), atol=1e-5, rtol=1e-5)
    out.unlink()
    for extra, match in ((["--input-shape", "4,12,10"], "[4, 12, 10] does not fit it"),
                         (["--input-shape", "3,12"], "does not fit it"),
                         (["--input-shape", "3,12,10", "--input-shape", "3,4,4"], "2 input shape(s) given for 1")):
        assert main(["import", str(src), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and match in err[0] and err[1].startswith("  how to fix: "), err
        assert not out.exists()


def test_import_onnx_that_does_not_import_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    assert main(["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "j.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not an ONNX model" in err[0] and "torch.onnx.export" in err[1]


def test_from_onnx_input_shapes_leaves_the_callers_proto_alone():
    from archir.frontend import from_onnx

    m = torch.nn.Conv2d(3, 2, 1).eval()
    buf = __import__("io").BytesIO()
    torch.onnx.export(m, (torch.randn(1, 3, 4, 4),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    proto = onnx.load_from_string(buf.getvalue())
    g = from_onnx(proto, input_shapes=[(3, 5, 6)])
    assert g.node(g.inputs[0]).type.shape == (3, 5, 6)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["b", "", "h", "w"]
