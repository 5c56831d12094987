"""Saving and loading graphs: structure as JSON, weights as safetensors.

``archir.save(g, "net.json")`` writes ``net.json`` (schema-versioned structure) and, when
the graph has weights, ``net.safetensors`` beside it. Nothing is ever pickled or eval'd.

Writes are atomic: each file is written to a temporary file in the same folder, flushed
to disk, then renamed over the old one, so a failed save leaves the old files intact. The
JSON records the sha256 of the weights file, so a weights file that does not belong to the
structure (or a save interrupted between the two renames) is detected on load.

Loading treats the file as untrusted: sizes, nesting depth, types of every field and the
weights file name are checked before anything is built, and the graph is validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import networkx as nx
import numpy as np

from archir.errors import IRError, SerializationError
from archir.graph import Graph, arch_key, freeze_array
from archir.ops import get_op

__all__ = ["save", "load", "atomic_write", "SCHEMA_VERSION", "to_json_dict", "from_json_dict"]

SCHEMA_VERSION = 1
FORMAT = "archir.graph"
MAX_JSON_BYTES = 64 << 20
MAX_WEIGHTS_BYTES = 8 << 30
MAX_DEPTH = 32


def _weights_path(path: Path) -> Path:
    return path.with_suffix(".safetensors")


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace one file atomically: a temporary file beside it, flushed, then renamed over it.

    A failure leaves the old file as it was and no temporary file behind.
    """
    _write_pair(Path(path), data, None, None)


_atomic_write = atomic_write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``path``, flushed to disk; returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; saved graphs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _keep_aside(path: Path) -> str | None:
    """A second name for the current file at ``path`` (a hard link, else a copy), or None if there is none."""
    if not path.is_file():
        return None
    fd, bak = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak", dir=path.parent)
    os.close(fd)
    try:
        os.unlink(bak)
        os.link(path, bak)  # no copy of a large weights file
    except OSError:
        try:
            shutil.copyfile(path, bak)  # filesystems without hard links
        except BaseException:
            _unlink(bak)
            raise
    return bak


def _write_pair(path: Path, text: bytes, wpath: Path | None, blob: bytes | None) -> None:
    """Replace the JSON at ``path`` (and the weights at ``wpath``) so that a failure changes neither.

    Both files are written to temporary files first (where a full disk fails); then the weights are
    renamed into place and then the JSON. If the JSON rename fails, the old weights file is put back
    (or the new one removed when there was none), so the old pair still loads.
    """
    tmps: list[str] = []
    backup = None
    try:
        tmp_w = None
        if wpath is not None:
            tmp_w = _write_temp(wpath, blob)
            tmps.append(tmp_w)
        tmp_j = _write_temp(path, text)
        tmps.append(tmp_j)
        if tmp_w is not None:
            backup = _keep_aside(wpath)
            os.replace(tmp_w, wpath)
            tmps.remove(tmp_w)
        try:
            os.replace(tmp_j, path)
            tmps.remove(tmp_j)
        except BaseException:
            if tmp_w is not None:
                if backup is not None:
                    os.replace(backup, wpath)
                    backup = None
                else:
                    _unlink(wpath)
            raise
    finally:
        for t in tmps:
            _unlink(t)
        if backup is not None:
            _unlink(backup)


def _tensors(g: Graph) -> dict[str, np.ndarray]:
    out = {}
    for node in g.nodes():
        for k, a in node.params.items():
            out[f"params/{node.id}/{k}"] = np.ascontiguousarray(a)
        for k, a in node.buffers.items():
            out[f"buffers/{node.id}/{k}"] = np.ascontiguousarray(a)
    for k, a in g.arch.items():
        out[f"arch/{k}"] = np.ascontiguousarray(a)
    return out


def to_json_dict(g: Graph, weights: dict | None = None) -> dict:
    """The JSON structure of ``g`` (no weights)."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": g.name,
        "inputs": list(g.inputs),
        "outputs": list(g.outputs),
        "meta": g.meta,
        "nodes": [{"id": n.id, "op": n.op, "attrs": dict(n.attrs), "inputs": g.inputs_of(n.id)} for n in g.nodes()],
        "weights": weights,
    }


def save(g: Graph, path: str | os.PathLike) -> Path:
    """Write ``g`` to ``path`` (JSON) and its weights to ``path`` with suffix ``.safetensors``.

    Args:
        g: the graph. Its structure is validated first (weights need not be initialised).
        path: the JSON file to write, e.g. ``"net.json"``.

    Returns:
        The path of the JSON file.

    Raises:
        SerializationError: the path is unusable or a write failed (old files are left intact).
        IRError: the graph is invalid.

    Example:
        >>> archir.save(g, "tiny.json")   # doctest: +SKIP
        PosixPath('tiny.json')
    """
    from safetensors.numpy import save as st_save

    path = Path(path)
    if path.suffix == ".safetensors":
        raise SerializationError(f"{path}: give the .json path; the .safetensors file is written beside it",
                                 rule="save", hint=f"archir.save(g, {str(path.with_suffix('.json'))!r})")
    if not path.parent.is_dir():
        raise SerializationError(f"{path}: folder {path.parent} does not exist", rule="save",
                                 hint="create the folder first")
    g.validate(weights=False)
    tensors = _tensors(g)
    weights, wpath, blob = None, None, None
    if tensors:
        blob = st_save(tensors, metadata={"format": FORMAT, "schema_version": str(SCHEMA_VERSION)})
        wpath = _weights_path(path)
        weights = {"file": wpath.name, "sha256": hashlib.sha256(blob).hexdigest(), "count": len(tensors)}
    try:
        text = json.dumps(to_json_dict(g, weights), indent=1, sort_keys=False)
    except (TypeError, ValueError) as e:
        raise SerializationError(f"{path}: the graph's meta is not plain JSON ({e})", rule="save",
                                 hint="keep g.meta to str, int, float, bool, None, lists and dicts") from None
    try:
        _write_pair(path, text.encode(), wpath, blob)
    except OSError as e:
        raise SerializationError(f"{path}: write failed: {e.strerror or e}", rule="save",
                                 hint="check the disk space and permissions; the old files are unchanged") from e
    return path


def _depth(x: Any, limit: int, d: int = 0) -> int:
    if d > limit:
        return d
    if isinstance(x, dict):
        return max([d] + [_depth(v, limit, d + 1) for v in x.values()])
    if isinstance(x, list):
        return max([d] + [_depth(v, limit, d + 1) for v in x])
    return d


def _need(cond: bool, what: str, src: str, node: str | None = None) -> None:
    if not cond:
        raise SerializationError(f"{src}: {what}", node=node, rule="format",
                                 hint="the file is damaged or not an archir graph; re-save it with archir.save()")


def from_json_dict(doc: Any, src: str = "<json>") -> Graph:
    """Build a graph (no weights) from a parsed JSON document, checking every field."""
    _need(isinstance(doc, dict), "top level is not a JSON object", src)
    _need(doc.get("format") == FORMAT, f"'format' is {doc.get('format')!r}, expected {FORMAT!r}", src)
    ver = doc.get("schema_version")
    _need(isinstance(ver, int) and not isinstance(ver, bool), "'schema_version' is missing or not an int", src)
    if ver > SCHEMA_VERSION:
        raise SerializationError(f"{src}: written with schema version {ver}; this archir reads up to "
                                 f"{SCHEMA_VERSION}", rule="schema_version",
                                 hint="upgrade archir (pip install -U archir) to read this file")
    _need(ver >= 1, f"'schema_version' {ver} is not valid", src)
    _need(_depth(doc, MAX_DEPTH) <= MAX_DEPTH, f"nested more than {MAX_DEPTH} levels deep", src)
    name = doc.get("name")
    _need(isinstance(name, str) and bool(name), "'name' must be a non-empty string", src)
    nodes = doc.get("nodes")
    _need(isinstance(nodes, list), "'nodes' must be a list", src)
    for key in ("inputs", "outputs"):
        _need(isinstance(doc.get(key), list) and all(isinstance(i, str) for i in doc[key]),
              f"'{key}' must be a list of node ids", src)
    _need(isinstance(doc.get("meta", {}), dict), "'meta' must be an object", src)
    g = Graph(name)
    g.meta = doc.get("meta", {})
    wiring = []
    for i, nd in enumerate(nodes):
        _need(isinstance(nd, dict) and set(nd) == {"id", "op", "attrs", "inputs"},
              f"node #{i} must have exactly the keys id, op, attrs, inputs", src)
        nid = nd["id"]
        _need(isinstance(nid, str), f"node #{i} id is not a string", src)
        _need(isinstance(nd["attrs"], dict), "attrs must be an object", src, nid)
        _need(isinstance(nd["inputs"], list) and all(isinstance(s, str) for s in nd["inputs"]),
              "inputs must be a list of node ids", src, nid)
        g._check_new_id(nid)
        opdef = get_op(nd["op"], nid)
        attrs = opdef.normalize_attrs(nd["attrs"], node=nid)
        g._g.add_node(nid, op=nd["op"], attrs=attrs, params={}, buffers={}, type=None)
        wiring.append((nid, nd["inputs"]))
    for nid, srcs in wiring:
        for port, s in enumerate(srcs):
            _need(s in g._g, f"input {port} is {s!r}, which is not a node in the file", src, nid)
            g._g.add_edge(s, nid, port=port)
    for i in doc["inputs"]:
        _need(i in g._g and g._g.nodes[i]["op"] == "input", f"graph input {i!r} is not an input node", src)
    for o in doc["outputs"]:
        _need(o in g._g, f"graph output {o!r} is not a node", src)
    g._inputs, g._outputs = list(doc["inputs"]), list(doc["outputs"])
    g._counter = len(nodes)
    for node in g.nodes("choice"):
        g.arch.setdefault(arch_key(node.id, node.attrs), None)  # filled from the weights file
    g.arch = {k: v for k, v in g.arch.items() if v is not None}
    return g


def load(path: str | os.PathLike) -> Graph:
    """Read a graph written by :func:`save` and validate it.

    Raises:
        SerializationError: the file is missing, too large, not archir JSON, of a newer
            schema version, or its weights file is missing or does not match.
        IRError: the structure in the file is not a valid graph.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    path = Path(path)
    src = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise SerializationError(f"{src}: {size} bytes is more than the {MAX_JSON_BYTES} a graph file may have",
                                     rule="size", hint="this is not an archir graph file")
        text = path.read_bytes()
    except FileNotFoundError:
        raise SerializationError(f"{src}: no such file", rule="load", hint="check the path") from None
    except IsADirectoryError:
        raise SerializationError(f"{src}: is a folder, not a graph file", rule="load") from None
    except PermissionError as e:
        raise SerializationError(f"{src}: cannot read: {e.strerror}", rule="load") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise SerializationError(f"{src}: JSON nested too deeply", rule="format",
                                 hint="the file is damaged or hostile") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SerializationError(f"{src}: not valid JSON ({e})", rule="format",
                                 hint="the file is truncated or damaged; re-save it with archir.save()") from None
    with _naming_file(src):
        g = from_json_dict(doc, src)
    w = doc.get("weights")
    if w is not None:
        _need(isinstance(w, dict) and isinstance(w.get("file"), str) and isinstance(w.get("sha256"), str),
              "'weights' must name a file and its sha256", src)
        fname = w["file"]
        if fname != Path(fname).name or fname in ("", ".", "..") or not fname.endswith(".safetensors"):
            raise SerializationError(f"{src}: weights file name {fname!r} is not a plain .safetensors file name",
                                     rule="weights", hint="the weights file must sit beside the JSON file")
        wpath = path.parent / fname
        if wpath.is_symlink() or not wpath.is_file():
            raise SerializationError(f"{src}: weights file {wpath} is missing (or not a regular file)",
                                     rule="weights", hint=f"copy {fname} next to {path.name}")
        if wpath.stat().st_size > MAX_WEIGHTS_BYTES:
            raise SerializationError(f"{wpath}: larger than {MAX_WEIGHTS_BYTES} bytes", rule="size")
        blob = wpath.read_bytes()
        if hashlib.sha256(blob).hexdigest() != w["sha256"]:
            raise SerializationError(f"{wpath} does not match {path.name} (sha256 differs)", rule="weights",
                                     hint="the weights belong to another save of this graph; save both files again")
        try:  # KeyError: a dtype that numpy lacks (BF16, as in torch checkpoints)
            tensors = st_load(blob)
        except (SafetensorError, ValueError, OSError, KeyError, TypeError) as e:
            raise SerializationError(f"{wpath}: not a valid safetensors file ({e})", rule="weights") from None
        _assign_weights(g, tensors, str(wpath))
    with _naming_file(src):
        g.validate(weights=w is not None)
    return g


@contextmanager
def _naming_file(src: str) -> Iterator[None]:
    """Re-raise an ``IRError`` about the graph with the file's path in front of its message."""
    try:
        yield
    except IRError as e:
        if e.message.startswith(src):
            raise
        raise type(e)(f"{src}: {e.message}", node=e.node, rule=e.rule, hint=e.hint,
                      context=e.context) from None


def _assign_weights(g: Graph, tensors: dict[str, np.ndarray], src: str) -> None:
    seen = set()
    for key, arr in tensors.items():
        parts = key.split("/", 2)
        kind = parts[0]
        if kind == "arch" and len(parts) == 2:
            if parts[1] not in {arch_key(n.id, n.attrs) for n in g.nodes("choice")}:
                raise SerializationError(f"{src}: tensor {key!r} belongs to no choice node", rule="weights")
            if arr.dtype != np.float32:
                raise SerializationError(f"{src}: tensor {key!r} is {arr.dtype}, archir weights are float32",
                                         rule="weights")
            g.arch[parts[1]] = freeze_array(arr)
        elif kind in ("params", "buffers") and len(parts) == 3:
            nid, name = parts[1], parts[2]
            if nid not in g:
                raise SerializationError(f"{src}: tensor {key!r} names node {nid!r}, which the graph lacks",
                                         rule="weights", hint="the weights file belongs to another graph")
            if arr.dtype != np.float32:
                raise SerializationError(f"{src}: tensor {key!r} is {arr.dtype}, archir weights are float32",
                                         node=nid, rule="weights")
            (g.set_params if kind == "params" else g.set_buffers)(nid, **{name: arr})
        else:
            raise SerializationError(f"{src}: unexpected tensor name {key!r}", rule="weights",
                                     hint="names are params/<node>/<name>, buffers/<node>/<name> or arch/<key>")
        seen.add(key)
