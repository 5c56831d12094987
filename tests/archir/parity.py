"""Shared checks of the import tests: an imported graph against its torch module in fx and ORT, and torch's
dynamo export of a module."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnxruntime as ort
import torch

from archir.lower import to_fx, to_onnx


def ort_run(g, x: np.ndarray) -> np.ndarray:
    """``g``'s first output under ONNX Runtime (CPU) on ``x``."""
    s = ort.InferenceSession(to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {g.inputs[0]: x})[0]


def ort_file(proto, x: np.ndarray) -> np.ndarray:
    """An ONNX file's (``onnx.ModelProto``) first output under ONNX Runtime (CPU) on ``x``, fed to its first input."""
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def assert_matches_file_at_batches(g, m: torch.nn.Module, proto, shape, batches=(1, 3)) -> None:
    """``to_fx(g)`` of the graph read from ``proto`` agrees with ORT on that file (1e-5) and with ``m`` (1e-4) on
    random ``(batch, *shape)`` inputs at each of ``batches`` (sizes other than the export's: a dynamic batch)."""
    fx = to_fx(g).eval()
    for batch in batches:
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got = fx(x).numpy()
            want = m(x).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, ort_file(proto, x.numpy()), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def assert_matches_module(g, m: torch.nn.Module, x: torch.Tensor, tol: float = 1e-4) -> np.ndarray:
    """``to_fx(g)`` and ``to_onnx(g)`` under ORT agree with ``m`` on ``x`` (rtol = atol = ``tol``), on outputs that
    are not near zero (a parity check on vanishing outputs would prove nothing); returns the module's output."""
    with torch.no_grad():
        ref = m(x).numpy()
        got = to_fx(g).eval()(x).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(ort_run(g, x.numpy()), ref, rtol=tol, atol=tol)
    return ref


def assert_reads_back_as_one(g, node_id: str):
    """``from_onnx(to_onnx(g))`` of a one-op graph gives that op again with the same weights; returns the graph
    and the node read back (the attrs are the caller's to compare: some ops read them back normalised)."""
    from archir.frontend import from_onnx

    op = g.node(node_id).op
    g2 = from_onnx(to_onnx(g.validate()))
    assert [n.op for n in g2.nodes()] == ["input", op]
    (back,) = g2.nodes(op)
    for k, v in g.node(node_id).params.items():
        np.testing.assert_array_equal(back.params[k], v)
    return g2, back


def dynamo_export(module, shape, batch: int = 2):
    """``module``'s ``torch.onnx.export(dynamo=True)`` on a ``(batch, *shape)`` sample with a dynamic batch (an
    ``onnx.ModelProto``); the exporter's warnings and log lines are silenced."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, (x,), dynamo=True, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},))
    finally:
        logging.disable(logging.NOTSET)
    return prog.model_proto
