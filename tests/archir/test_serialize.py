"""archir.save / archir.load: round trips, hostile and broken files, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import archir
import archir.serialize
from archir import GraphStructureError, IRError, OpSchemaError, SerializationError, WeightError
from archir.samples import SAMPLES

# --------------------------------------------------------------------------- helpers


def assert_same_graph(a: archir.Graph, b: archir.Graph) -> None:
    assert a.name == b.name
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert a.meta == b.meta
    assert list(a) == list(b)  # same ids, same insertion order
    for n in a:
        na, nb = a.node(n), b.node(n)
        assert na.op == nb.op and dict(na.attrs) == dict(nb.attrs), n
        assert na.type == nb.type, n
        assert a.inputs_of(n) == b.inputs_of(n), n
        for kind in ("params", "buffers"):
            pa, pb = getattr(na, kind), getattr(nb, kind)
            assert set(pa) == set(pb), (n, kind)
            for k in pa:
                assert pb[k].dtype == np.float32 and not pb[k].flags.writeable
                assert np.array_equal(pa[k], pb[k]), (n, kind, k)
    assert set(a.arch) == set(b.arch)
    for k in a.arch:
        assert np.array_equal(a.arch[k], b.arch[k])
    assert a.structural_hash() == b.structural_hash()
    assert a.weights_hash() == b.weights_hash()


def fx_out(g: archir.Graph, **kw) -> torch.Tensor:
    m = archir.lower.to_fx(g, **kw).eval()
    x = torch.randn(2, *g.node(g.inputs[0]).type.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return m(x)


def supernet(tied: bool, seed: int = 0) -> archir.Graph:
    cands = [
        {"name": "conv3", "ops": [{"op": "relu"}, {"op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1,
                                                   "bias": False}, {"op": "batchnorm2d"}]},
        {"name": "pool", "ops": [{"op": "maxpool2d", "kernel_size": 3, "stride": 1, "padding": 1}]},
        {"name": "skip", "ops": []},
    ]
    g = archir.Graph("sup")
    h = g.input("x", (4, 8, 8))
    for i in range(3):
        h = g.add("choice", h, candidates=cands, tie="normal" if tied else None, name=f"cell{i}.e0")
    g.set_outputs(g.add("linear", g.add("flatten", g.add("global_avgpool", h)), out_features=3, name="head"))
    g.init_params(seed)
    # non-trivial BN statistics inside the candidates, so eval-mode outputs depend on them
    rng = np.random.default_rng(seed + 1)
    for n in g.nodes("choice"):
        g.set_buffers(n.id, **{"conv3.2.running_mean": rng.normal(0, 0.1, 4),
                               "conv3.2.running_var": rng.uniform(0.5, 1.5, 4)})
    return g.validate()


def saved(tmp_path, g=None, name="net.json"):
    g = g if g is not None else SAMPLES["chain"]()
    p = archir.save(g, tmp_path / name)
    return g, p


def rewrite_json(p, fn):
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


def write_weights(tmp_path, json_path, tensors, fname="net.safetensors"):
    """Write a safetensors file and make the JSON's sha match it, so the content checks are what fire."""
    blob = st_save(tensors)
    (tmp_path / fname).write_bytes(blob)

    def fix(doc):
        doc["weights"]["file"] = fname
        doc["weights"]["sha256"] = hashlib.sha256(blob).hexdigest()

    rewrite_json(json_path, fix)


def load_err(path, cls=SerializationError, *, rule=None, says=()):
    with pytest.raises(IRError) as ei:
        archir.load(path)
    e = ei.value
    assert isinstance(e, cls), f"expected {cls.__name__}, got {type(e).__name__}: {e}"
    assert type(e).__module__ == "archir.errors"
    if rule is not None:
        assert e.rule == rule, str(e)
    for s in says:
        assert s in str(e), f"{s!r} not in: {e}"
    return e


def files(d):
    return sorted(os.listdir(d))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_samples(tmp_path, name):
    g = SAMPLES[name](cells=3) if name == "darts_like" else SAMPLES[name]()
    g.meta = {"task": "cifar10", "scores": [0.5, 1, None], "nested": {"ok": True}}
    p = archir.save(g, tmp_path / f"{name}.json")
    assert p == tmp_path / f"{name}.json"
    assert files(tmp_path) == sorted([f"{name}.json", f"{name}.safetensors"])
    doc = json.loads(p.read_text())
    assert doc["format"] == "archir.graph" and doc["schema_version"] == archir.SCHEMA_VERSION
    g2 = archir.load(p)
    assert_same_graph(g, g2)
    assert torch.equal(fx_out(g), fx_out(g2))
    # and again: a loaded graph saves to the same structure and the same tensors
    archir.save(g2, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["nodes"] == doc["nodes"]
    t1 = st_load((tmp_path / f"{name}.safetensors").read_bytes())
    t2 = st_load((tmp_path / "again.safetensors").read_bytes())
    assert t1.keys() == t2.keys() and all(np.array_equal(t1[k], t2[k]) for k in t1)
    assert_same_graph(g, archir.load(tmp_path / "again.json"))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_round_trip_supernet(tmp_path, tied):
    g = supernet(tied)
    assert sorted(g.arch) == (["normal"] if tied else ["cell0.e0", "cell1.e0", "cell2.e0"])
    g2 = archir.load(archir.save(g, tmp_path / "sup.json"))
    assert_same_graph(g, g2)
    assert g2.node("cell1.e0").attrs["tie"] == ("normal" if tied else None)
    for mode in ("softmax", "fixed"):
        assert torch.equal(fx_out(g, choice_mode=mode), fx_out(g2, choice_mode=mode))
    d1, d2 = archir.derive(g), archir.derive(g2)
    assert_same_graph(d1, d2)


def test_round_trip_without_weights(tmp_path):
    g = archir.Graph("bare")
    g.set_outputs(g.add("conv2d", g.input("x", (3, 8, 8)), out_channels=2, kernel_size=1, name="c"))
    p = archir.save(g, tmp_path / "bare.json")
    assert files(tmp_path) == ["bare.json"]
    assert json.loads(p.read_text())["weights"] is None
    g2 = archir.load(p)
    assert dict(g2.node("c").params) == {} and g2.structural_hash() == g.structural_hash()
    with pytest.raises(WeightError, match="missing"):
        g2.validate()


def test_save_overwrites_both_files(tmp_path):
    g0, p = saved(tmp_path)
    g1 = SAMPLES["chain"](seed=1)
    archir.save(g1, p)
    assert files(tmp_path) == ["net.json", "net.safetensors"]
    assert archir.load(p).weights_hash() == g1.weights_hash() != g0.weights_hash()


# --------------------------------------------------------------------------- saving: bad paths and graphs


def test_save_to_missing_folder(tmp_path):
    with pytest.raises(SerializationError, match="does not exist") as ei:
        archir.save(SAMPLES["chain"](), tmp_path / "no" / "such" / "net.json")
    assert ei.value.rule == "save" and "create the folder" in ei.value.hint
    assert not (tmp_path / "no").exists()


def test_save_to_safetensors_path(tmp_path):
    with pytest.raises(SerializationError, match="give the .json path") as ei:
        archir.save(SAMPLES["chain"](), tmp_path / "net.safetensors")
    assert "net.json" in ei.value.hint
    assert files(tmp_path) == []


def test_save_invalid_graph(tmp_path):
    g = archir.Graph("g")
    g.add("relu", g.input("x", (3,)))
    with pytest.raises(GraphStructureError, match="no outputs"):
        archir.save(g, tmp_path / "g.json")
    assert files(tmp_path) == []


def test_save_non_json_meta(tmp_path):
    g = SAMPLES["chain"]()
    g.meta = {"when": object()}
    with pytest.raises(SerializationError, match="not plain JSON"):
        archir.save(g, tmp_path / "net.json")
    assert files(tmp_path) == []


# --------------------------------------------------------------------------- atomic save


def _failing_replace(monkeypatch, fail_on: int):
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((str(src), str(dst)))
        if len(calls) == fail_on:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("fail_on", [1, 2], ids=["weights-rename", "json-rename"])
def test_failed_save_leaves_old_files_unchanged(tmp_path, monkeypatch, fail_on):
    g0, p = saved(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in files(tmp_path)}
    calls = _failing_replace(monkeypatch, fail_on)
    with pytest.raises(SerializationError, match="No space left on device") as ei:
        archir.save(SAMPLES["chain"](seed=1), p)
    assert ei.value.rule == "save" and "old files are unchanged" in ei.value.hint
    assert len(calls) >= fail_on
    monkeypatch.undo()
    assert files(tmp_path) == ["net.json", "net.safetensors"]  # no temp or backup files left
    assert {f: (tmp_path / f).read_bytes() for f in files(tmp_path)} == before
    assert archir.load(p).weights_hash() == g0.weights_hash()


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    _failing_replace(monkeypatch, 2)
    with pytest.raises(SerializationError):
        archir.save(SAMPLES["chain"](), tmp_path / "net.json")
    monkeypatch.undo()
    assert files(tmp_path) == []


def test_failed_write_leaves_old_files_unchanged(tmp_path, monkeypatch):
    g0, p = saved(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in files(tmp_path)}
    real, n = os.fsync, []

    def fsync(fd):
        n.append(fd)
        if len(n) == 2:  # the JSON's temp file: the weights' temp file is already written
            raise OSError(5, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SerializationError, match="Input/output error"):
        archir.save(SAMPLES["chain"](seed=1), p)
    monkeypatch.undo()
    assert files(tmp_path) == ["net.json", "net.safetensors"]
    assert {f: (tmp_path / f).read_bytes() for f in files(tmp_path)} == before


# --------------------------------------------------------------------------- broken JSON


def test_missing_file_and_folder(tmp_path):
    load_err(tmp_path / "nope.json", rule="load", says=("no such file",))
    load_err(tmp_path, rule="load", says=("is a folder",))


@pytest.mark.parametrize("cut", [1, 10, 100, -2])
def test_truncated_json(tmp_path, cut):
    _, p = saved(tmp_path)
    text = p.read_bytes()
    p.write_bytes(text[:cut])
    e = load_err(p, rule="format", says=("not valid JSON", "truncated"))
    assert str(p) in str(e)


@pytest.mark.parametrize("raw", [b"", b"\x00\x01binary\xff", b"<xml/>", b"null", b"[1, 2]", b"\"archir\""])
def test_not_json_or_not_an_object(tmp_path, raw):
    p = tmp_path / "x.json"
    p.write_bytes(raw)
    load_err(p, rule="format")


def test_wrong_format(tmp_path):
    _, p = saved(tmp_path)
    rewrite_json(p, lambda d: d.update(format="onnx"))
    load_err(p, rule="format", says=("'format' is 'onnx'", "archir.graph"))
    rewrite_json(p, lambda d: d.pop("format"))
    load_err(p, rule="format", says=("'format' is None",))


@pytest.mark.parametrize("version", [2, 999, 10**30])
def test_future_schema_version(tmp_path, version):
    _, p = saved(tmp_path)
    rewrite_json(p, lambda d: d.update(schema_version=version))
    e = load_err(p, rule="schema_version", says=(f"schema version {version}", "reads up to 1"))
    assert "upgrade" in e.hint.lower() and "upgrade archir" in str(e)


@pytest.mark.parametrize("version", ["1", 1.0, True, None, [1]])
def test_schema_version_not_an_int(tmp_path, version):
    _, p = saved(tmp_path)
    rewrite_json(p, lambda d: d.update(schema_version=version))
    load_err(p, rule="format", says=("'schema_version' is missing or not an int",))


def test_schema_version_zero(tmp_path):
    _, p = saved(tmp_path)
    rewrite_json(p, lambda d: d.update(schema_version=0))
    load_err(p, rule="format", says=("not valid",))


def test_deep_nesting(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    load_err(p, rule="format", says=("nested too deeply",))
    p.write_text('{"format": "archir.graph", "schema_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    load_err(p, rule="format", says=("nested too deeply",))
    # parseable, but deeper than an archir file ever is
    _, q = saved(tmp_path)
    rewrite_json(q, lambda d: d.update(meta={"a": json.loads("[" * 200 + "]" * 200)}))
    load_err(q, rule="format", says=("nested more than",))


def test_absurd_dims(tmp_path):
    _, p = saved(tmp_path)
    rewrite_json(p, lambda d: d["nodes"][0]["attrs"].update(shape=[10**9]))
    e = load_err(p, OpSchemaError, rule="attr", says=("'shape'",))
    assert e.node == "x"
    rewrite_json(p, lambda d: d["nodes"][0]["attrs"].update(shape=[100_000, 100_000, 100_000]))
    load_err(p, OpSchemaError, says=("elements, more than",))
    rewrite_json(p, lambda d: d["nodes"][0]["attrs"].update(shape=[3, 16, 16]))
    rewrite_json(p, lambda d: d["nodes"][1]["attrs"].update(out_channels=10**40))
    e = load_err(p, OpSchemaError, rule="attr", says=("must be <=",))
    assert e.node == "l0.conv"


def test_huge_file_over_size_cap(tmp_path, monkeypatch):
    _, p = saved(tmp_path)
    monkeypatch.setattr(archir.serialize, "MAX_JSON_BYTES", 100)
    load_err(p, rule="size", says=("more than the 100",))


def test_weights_over_size_cap(tmp_path, monkeypatch):
    _, p = saved(tmp_path)
    monkeypatch.setattr(archir.serialize, "MAX_WEIGHTS_BYTES", 100)
    load_err(p, rule="size", says=("larger than 100 bytes",))


@pytest.mark.parametrize("mutate,says", [
    (lambda d: d.update(name=""), "'name' must be a non-empty string"),
    (lambda d: d.update(nodes={}), "'nodes' must be a list"),
    (lambda d: d.update(inputs="x"), "'inputs' must be a list"),
    (lambda d: d.update(outputs=[1]), "'outputs' must be a list"),
    (lambda d: d.update(meta=[]), "'meta' must be an object"),
    (lambda d: d["nodes"][1].update(extra=1), "exactly the keys id, op, attrs, inputs"),
    (lambda d: d["nodes"][1].update(id=5), "id is not a string"),
    (lambda d: d["nodes"][1].update(attrs=[]), "attrs must be an object"),
    (lambda d: d["nodes"][1].update(inputs="x"), "inputs must be a list"),
    (lambda d: d["nodes"][1].update(inputs=["ghost"]), "'ghost', which is not a node"),
    (lambda d: d.update(outputs=["ghost"]), "graph output 'ghost' is not a node"),
    (lambda d: d.update(inputs=["l0.conv"]), "graph input 'l0.conv' is not an input node"),
    (lambda d: d.update(weights="net.safetensors"), "'weights' must name a file and its sha256"),
])
def test_malformed_fields(tmp_path, mutate, says):
    _, p = saved(tmp_path)
    rewrite_json(p, mutate)
    load_err(p, rule="format", says=(says,))


@pytest.mark.parametrize("mutate,cls,rule", [
    (lambda d: d["nodes"][1].update(op="conv3d"), OpSchemaError, "op"),
    (lambda d: d["nodes"][1].update(op=["conv2d"]), OpSchemaError, "op"),
    (lambda d: d["nodes"][1]["attrs"].update(kernel_size="3"), OpSchemaError, "attr"),
    (lambda d: d["nodes"][1].update(id="../../etc"), GraphStructureError, "id"),
    (lambda d: d["nodes"].append(d["nodes"][1]), GraphStructureError, "id"),
    (lambda d: d["nodes"][1].update(inputs=["l0.conv"]), GraphStructureError, "acyclic"),
    (lambda d: d["nodes"][1].update(inputs=["x", "x"]), OpSchemaError, "arity"),
    (lambda d: d.update(inputs=["x", "x"]), GraphStructureError, "inputs"),
    (lambda d: d.update(outputs=[]), GraphStructureError, "outputs"),
])
def test_invalid_graph_in_file(tmp_path, mutate, cls, rule):
    _, p = saved(tmp_path)
    rewrite_json(p, mutate)
    e = load_err(p, cls, rule=rule)
    assert e.hint


# --------------------------------------------------------------------------- weights file


def test_missing_weights_file(tmp_path):
    _, p = saved(tmp_path)
    (tmp_path / "net.safetensors").unlink()
    e = load_err(p, rule="weights", says=("is missing",))
    assert "net.safetensors" in e.hint


def test_weights_from_another_save(tmp_path):
    _, p = saved(tmp_path)
    archir.save(SAMPLES["chain"](seed=1), tmp_path / "other.json")
    shutil.copyfile(tmp_path / "other.safetensors", tmp_path / "net.safetensors")
    e = load_err(p, rule="weights", says=("does not match net.json (sha256 differs)",))
    assert "save both files again" in e.hint


@pytest.mark.parametrize("fname", ["../net.safetensors", "sub/net.safetensors", "/etc/net.safetensors",
                                   "..", ".", "", "net.json", "net.pt"])
def test_weights_file_name_must_be_plain(tmp_path, fname):
    _, p = saved(tmp_path)
    (tmp_path / "sub").mkdir()
    shutil.copyfile(tmp_path / "net.safetensors", tmp_path / "sub" / "net.safetensors")
    rewrite_json(p, lambda d: d["weights"].update(file=fname))
    load_err(p, rule="weights", says=("is not a plain .safetensors file name",))


def test_weights_symlink_is_refused(tmp_path):
    _, p = saved(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(tmp_path / "net.safetensors", elsewhere / "real.safetensors")
    os.symlink(elsewhere / "real.safetensors", tmp_path / "net.safetensors")  # the sha would match
    load_err(p, rule="weights", says=("not a regular file",))


def test_weights_folder_is_refused(tmp_path):
    _, p = saved(tmp_path)
    (tmp_path / "net.safetensors").unlink()
    (tmp_path / "net.safetensors").mkdir()
    load_err(p, rule="weights", says=("not a regular file",))


def test_safetensors_missing_tensor(tmp_path):
    _, p = saved(tmp_path)
    tensors = st_load((tmp_path / "net.safetensors").read_bytes())
    del tensors["params/head/weight"]
    write_weights(tmp_path, p, tensors)
    e = load_err(p, WeightError, rule="weights", says=("params ['weight'] are missing",))
    assert e.node == "head"


def test_safetensors_extra_tensor(tmp_path):
    _, p = saved(tmp_path)
    base = st_load((tmp_path / "net.safetensors").read_bytes())
    write_weights(tmp_path, p, {**base, "params/ghost/weight": np.zeros(3, np.float32)})
    load_err(p, rule="weights", says=("names node 'ghost', which the graph lacks",))
    write_weights(tmp_path, p, {**base, "params/head/gain": np.zeros(3, np.float32)})
    e = load_err(p, WeightError, rule="weights", says=("params ['gain'] are not used by op 'linear'",))
    assert e.node == "head"
    write_weights(tmp_path, p, {**base, "junk": np.zeros(3, np.float32)})
    load_err(p, rule="weights", says=("unexpected tensor name 'junk'",))
    write_weights(tmp_path, p, {**base, "arch/normal": np.zeros(3, np.float32)})
    load_err(p, rule="weights", says=("belongs to no choice node",))


def test_safetensors_wrong_shape(tmp_path):
    _, p = saved(tmp_path)
    tensors = st_load((tmp_path / "net.safetensors").read_bytes())
    tensors["params/head/weight"] = np.zeros((10, 3), np.float32)
    write_weights(tmp_path, p, tensors)
    load_err(p, WeightError, rule="weights", says=("has shape (10, 3), op needs (10, 16)",))


def test_safetensors_nan(tmp_path):
    _, p = saved(tmp_path)
    tensors = st_load((tmp_path / "net.safetensors").read_bytes())
    tensors["params/head/bias"] = np.full(10, np.nan, np.float32)
    write_weights(tmp_path, p, tensors)
    load_err(p, WeightError, rule="finite")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64])
def test_safetensors_wrong_dtype(tmp_path, dtype):
    _, p = saved(tmp_path)
    tensors = st_load((tmp_path / "net.safetensors").read_bytes())
    tensors["params/head/weight"] = tensors["params/head/weight"].astype(dtype)
    write_weights(tmp_path, p, tensors)
    e = load_err(p, rule="weights", says=(f"is {np.dtype(dtype).name}, archir weights are float32",))
    assert e.node == "head"


def test_safetensors_bf16_tensor(tmp_path):
    """A dtype numpy cannot hold (bfloat16, as torch checkpoints have) is a clear error, not a KeyError."""
    _, p = saved(tmp_path)
    blob = (tmp_path / "net.safetensors").read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header["params/head/weight"]["dtype"] = "BF16"
    header["params/head/weight"]["shape"][-1] *= 2  # same bytes, two per element
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    new = struct.pack("<Q", len(h)) + h + blob[8 + n:]
    (tmp_path / "net.safetensors").write_bytes(new)
    rewrite_json(p, lambda d: d["weights"].update(sha256=hashlib.sha256(new).hexdigest()))
    load_err(p, rule="weights", says=("not a valid safetensors file",))


def test_arch_logits_wrong_dtype(tmp_path):
    g = supernet(tied=True)
    p = archir.save(g, tmp_path / "sup.json")
    tensors = st_load((tmp_path / "sup.safetensors").read_bytes())
    tensors["arch/normal"] = tensors["arch/normal"].astype(np.float64)
    write_weights(tmp_path, p, tensors, fname="sup.safetensors")
    load_err(p, rule="weights", says=("'arch/normal' is float64",))
    del tensors["arch/normal"]
    write_weights(tmp_path, p, tensors, fname="sup.safetensors")
    load_err(p, WeightError, rule="arch", says=("decision 'normal' needs 3 architecture logits",))


@pytest.mark.parametrize("blob", [b"", b"not safetensors at all", b"\xff" * 64,
                                  struct.pack("<Q", 10**12) + b"{}"])
def test_garbage_weights_with_matching_sha(tmp_path, blob):
    _, p = saved(tmp_path)
    (tmp_path / "net.safetensors").write_bytes(blob)
    rewrite_json(p, lambda d: d["weights"].update(sha256=hashlib.sha256(blob).hexdigest()))
    load_err(p, rule="weights", says=("not a valid safetensors file",))


def test_loaded_weights_are_private_read_only_copies(tmp_path):
    g, p = saved(tmp_path)
    g2 = archir.load(p)
    w = g2.node("head").params["weight"]
    assert not w.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0


@pytest.mark.parametrize("edit, err, words", [
    (lambda doc: doc["nodes"][1]["attrs"].update(kernel_size="big"), OpSchemaError, "kernel_size"),
    (lambda doc: doc["nodes"][2].update(inputs=[doc["nodes"][1]["id"], doc["inputs"][0]]), OpSchemaError,
     "takes 1 input"),
    (lambda doc: doc["nodes"][1].update(op="conv9d"), OpSchemaError, "conv9d"),
])
def test_load_errors_name_the_file_and_node(tmp_path, edit, err, words):
    # a bad graph file: the error says which file, which node, and what is wrong
    g = SAMPLES["chain"]()
    archir.save(g, tmp_path / "good.json")
    doc = json.loads((tmp_path / "good.json").read_text())
    edit(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    shutil.copy(tmp_path / "good.safetensors", tmp_path / "bad.safetensors")
    with pytest.raises(err) as info:
        archir.load(tmp_path / "bad.json")
    first = str(info.value).splitlines()[0]
    assert str(tmp_path / "bad.json") in first and words in first and info.value.node is not None
    assert info.value.hint
