"""search.data: the embedded digits set, user .npz files and image folders, and every refusal."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from search.data import DIGITS_PATH, DataError, Dataset, load_dataset, split_indices


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_splits():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    sizes = [len(ds.y_train), len(ds.y_val), len(ds.y_test)]
    assert sum(sizes) == 1797 and sizes == [1079, 359, 359]
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and y.dtype == np.int64 and len(x) == len(y)
        assert set(np.unique(y)) == set(range(10))  # stratified: every class in every split
        assert not x.flags.writeable
    # standardised with the training split's statistics
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
    raw = np.load(DIGITS_PATH)["x"].astype(np.float64)
    assert ds.mean[0] == pytest.approx(raw.mean(), rel=0.05) and 0 < ds.std[0] < 16
    # stratified proportions: each class 60/20/20 within one sample
    for c in range(10):
        n = [(y == c).sum() for y in (ds.y_train, ds.y_val, ds.y_test)]
        assert abs(n[1] - 0.2 * sum(n)) <= 1 and abs(n[2] - 0.2 * sum(n)) <= 1


def test_digits_file_is_real_digits():
    with np.load(DIGITS_PATH, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and x.max() == 16 and x.min() == 0
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # a zero: hollow middle, ink around it (the first image of sklearn's set)
    assert y[0] == 0 and x[0, 3:5, 3:5].sum() == 0 and x[0, 1:7, 1:3].sum() > 20


def test_digits_need_no_sklearn_or_download():
    import subprocess
    import sys

    # any network use fails (a subclass, not None: search.data imports archir.errors, hence torch, which
    # imports ssl, which subclasses socket.socket)
    code = ("import sys, socket\n"
            "class NoNet(socket.socket):\n"
            "    def connect(self, *a):\n"
            "        raise AssertionError('network use')\n"
            "    connect_ex = connect\n"
            "socket.socket = NoNet\n"
            "socket.create_connection = NoNet.connect\n"
            "from search.data import load_dataset\n"
            "load_dataset('digits')\n"
            "assert 'sklearn' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_splits_are_deterministic_and_seeded():
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = load_dataset("digits", seed=4)
    assert not np.array_equal(a.y_train, c.y_train)
    # the splits partition the data
    y = np.load(DIGITS_PATH)["y"]
    parts = split_indices(y, seed=3)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(len(y)))


def test_a_folder_called_digits_is_reachable(tmp_path, monkeypatch):
    x, y = _images()
    (tmp_path / "digits").mkdir()
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "digits" / "d.npz", x=x, y=y)
    assert load_dataset("digits").name == "digits" and load_dataset("digits").num_classes == 10  # the embedded set
    with pytest.raises(DataError, match=r"found 0 class folder\(s\)"):
        load_dataset(Path("digits"))  # a Path is always a path


def test_custom_split_fractions():
    ds = load_dataset("digits", split=(0.8, 0.1, 0.1))
    assert len(ds.y_train) > 1400 and 170 <= len(ds.y_val) <= 190
    for bad in [(0.5, 0.5), (0.6, 0.3, 0.3), (1.0, 0.0, 0.0), "abc"]:
        with pytest.raises(DataError, match="split"):
            load_dataset("digits", split=bad)


# --------------------------------------------------------------------------- user .npz


def _save(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def _images(n=60, shape=(8, 8), k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, *shape)).astype(np.float32) + y.reshape(-1, *([1] * len(shape)))
    return x, y


def test_npz_layouts_agree(tmp_path):
    x, y = _images(shape=(3, 6, 7))
    nchw = load_dataset(_save(tmp_path, "a.npz", x=x, y=y))
    nhwc = load_dataset(_save(tmp_path, "b.npz", x=x.transpose(0, 2, 3, 1), y=y))
    explicit = load_dataset(_save(tmp_path, "c.npz", x=x, y=y), layout="NCHW")
    assert nchw.input_shape == (3, 6, 7) and nchw.num_classes == 3 and nchw.name == "a"
    for other in (nhwc, explicit):
        np.testing.assert_array_equal(nchw.x_train, other.x_train)
        np.testing.assert_array_equal(nchw.y_test, other.y_test)
    grey = load_dataset(_save(tmp_path, "d.npz", x=x[:, 0], y=y))  # NHW: one channel added
    one = load_dataset(_save(tmp_path, "e.npz", x=x[:, :1], y=y))
    assert grey.input_shape == (1, 6, 7)
    np.testing.assert_array_equal(grey.x_val, one.x_val)


def test_npz_values_after_layout(tmp_path):
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    x = np.concatenate([x] * 10)
    y = np.tile([0, 1], 10)
    a = load_dataset(_save(tmp_path, "a.npz", x=x, y=y))
    b = load_dataset(_save(tmp_path, "b.npz", x=x.transpose(0, 2, 3, 1), y=y))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.input_shape == (3, 5, 6)


def test_npz_integer_labels_of_any_int_dtype_and_integral_floats(tmp_path):
    x, y = _images()
    for yy in (y.astype(np.uint8), y.astype(np.int32), y.astype(np.float64)):
        ds = load_dataset(_save(tmp_path, x=x, y=yy))
        assert ds.y_train.dtype == np.int64 and ds.num_classes == 3


@pytest.mark.parametrize("arrays,match", [
    (lambda x, y: {"x": x}, r"missing array\(s\) \['y'\]"),
    (lambda x, y: {"images": x, "labels": y}, r"missing array\(s\) \['x', 'y'\]"),
    (lambda x, y: {"x": x[:0], "y": y[:0]}, "empty"),
    (lambda x, y: {"x": x, "y": y[:-1]}, r"y has shape \(59,\); expected \(60,\)"),
    (lambda x, y: {"x": x, "y": np.eye(3)[y]}, "one label per image"),
    (lambda x, y: {"x": x, "y": y - 1}, "label -1 at index 0 is out of range"),
    (lambda x, y: {"x": x, "y": y + 1}, r"class\(es\) \[0\] have no images"),
    (lambda x, y: {"x": x, "y": np.where(y == 1, 7, y)}, r"class\(es\) \[1, 3, 4, 5, 6\]"),
    (lambda x, y: {"x": x, "y": y + 0.5}, "label 0.5 at index 0 is not an integer"),
    (lambda x, y: {"x": x, "y": y.astype(bool)}, "not integers"),
    (lambda x, y: {"x": x, "y": np.array([str(v) for v in y])}, "not integers"),
    (lambda x, y: {"x": x, "y": np.zeros_like(y)}, "only 1 class"),
    (lambda x, y: {"x": np.where(np.arange(60)[:, None, None] == 7, np.nan, x), "y": y},
     r"64 NaN/Inf values \(first in image 7\)"),
    (lambda x, y: {"x": np.full_like(x, np.inf), "y": y}, "NaN/Inf"),
    (lambda x, y: {"x": x.reshape(60, -1), "y": y}, r"x has shape \(60, 64\); images need 3 dims"),
    (lambda x, y: {"x": x[:, None, None], "y": y}, "images need 3 dims"),
    (lambda x, y: {"x": np.zeros((60, 8, 8, 8)), "y": y}, "cannot tell the layout"),
    (lambda x, y: {"x": np.array(["a"] * 60), "y": y}, "not numbers"),
    (lambda x, y: {"x": x[:3], "y": y[:3]}, "split is empty"),
])
def test_npz_bad_inputs(tmp_path, arrays, match):
    x, y = _images()
    p = _save(tmp_path, **arrays(x, y))
    with pytest.raises(DataError, match=match) as e:
        load_dataset(p)
    assert str(p) in str(e.value)  # where
    assert isinstance(e.value, ValueError)


def test_npz_hints_say_how_to_fix(tmp_path):
    x, y = _images()
    with pytest.raises(DataError) as e:
        load_dataset(_save(tmp_path, x=x, y=y + 1))
    assert "np.unique(y, return_inverse=True)" in e.value.hint and "how to fix" in str(e.value)
    with pytest.raises(DataError) as e:
        load_dataset(_save(tmp_path, x=np.zeros((60, 8, 8, 8)), y=y))
    assert "layout='NCHW'" in e.value.hint
    # the layout argument settles the ambiguity
    assert load_dataset(_save(tmp_path, x=np.zeros((60, 8, 8, 8)), y=y), layout="NHWC").input_shape == (8, 8, 8)
    with pytest.raises(DataError, match=r"x has shape \(60, 8, 8\); layout NCHW needs 4 dims"):
        load_dataset(_save(tmp_path, x=x, y=y), layout="NCHW")
    with pytest.raises(DataError, match="unknown layout"):
        load_dataset(_save(tmp_path, x=x, y=y), layout="CHW")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such file") as e:
        load_dataset(tmp_path / "nope.npz")
    assert "digits" in e.value.hint
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not an .npz file"):
        load_dataset(junk)
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("x.npy", b"garbage")
        z.writestr("y.npy", b"garbage")
    with pytest.raises(DataError, match="broken.npz"):
        load_dataset(broken)
    objs = tmp_path / "objs.npz"
    np.savez(objs, x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataError, match="without pickle"):
        load_dataset(objs)
    csv = tmp_path / "data.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(DataError, match="unsupported dataset file type '.csv'"):
        load_dataset(csv)
    with pytest.raises(DataError, match="seed"):
        load_dataset("digits", seed=1.5)


# --------------------------------------------------------------------------- image folders


def _folder(tmp_path: Path, mode: str = "L", size=(6, 5), per_class: int = 10, classes=("cat", "dog", "eel")):
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            arr = (rng.integers(0, 100, shape) + 50 * k).astype(np.uint8)
            Image.fromarray(arr, mode=mode).save(root / c / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("ignored")
    return root


def test_image_folder_grey_and_rgb(tmp_path):
    root = _folder(tmp_path)
    ds = load_dataset(root)
    assert ds.input_shape == (1, 5, 6) and ds.num_classes == 3 and ds.classes == ("cat", "dog", "eel")
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 30 and ds.name == "imgs"
    rgb = _folder(tmp_path / "rgb", mode="RGB")
    ds = load_dataset(rgb)
    assert ds.input_shape == (3, 5, 6)
    # labels follow the sorted class folders: "eel" images are the brightest
    raw_mean = [float((ds.x_train[ds.y_train == k] * ds.std[0] + ds.mean[0]).mean()) for k in range(3)]
    assert raw_mean == sorted(raw_mean)


def test_image_folder_refusals(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(root / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: image is 7x7, others are 6x5") as e:
        load_dataset(root)
    assert "resize" in e.value.hint
    (root / "dog" / "odd.png").unlink()
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: cannot read the image"):
        load_dataset(root)
    (root / "dog" / "bad.png").unlink()
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="class folder 'empty' holds no images"):
        load_dataset(root)
    lone = tmp_path / "lone"
    (lone / "only").mkdir(parents=True)
    with pytest.raises(DataError, match=r"found 1 class folder\(s\)") as e:
        load_dataset(lone)
    assert "root/<class name>/<image file>" in e.value.hint


def test_image_folder_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    root = _folder(tmp_path)
    real = builtins.__import__

    def no_pil(name, *a, **k):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(DataError, match="needs Pillow") as e:
        load_dataset(root)
    assert "pip install pillow" in e.value.hint
