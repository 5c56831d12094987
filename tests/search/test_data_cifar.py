"""search.cifar / load_dataset("cifar10:DIR"): the official binary batches, written here in their exact
format (a few hundred images), the torchvision pickle layout refused, and every bad-data case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.cifar import CIFAR_MEAN, CIFAR_STD, read_cifar
from search.data import DataError, load_dataset


def _records(n: int, seed: int, kind: str = "cifar10") -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    if kind == "cifar10":
        y = (np.arange(n) % 10).astype(np.uint8)
        rec = np.concatenate([y[:, None], x.reshape(n, -1)], axis=1)
    else:
        y = (np.arange(n) % 100).astype(np.uint8)
        rec = np.concatenate([(y // 5)[:, None], y[:, None], x.reshape(n, -1)], axis=1)
    return rec.tobytes(), x, y


def write_cifar10(root: Path, per_batch: int = 40, test: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's binary layout: root/cifar-10-batches-bin/data_batch_{1..5}.bin, test_batch.bin, batches.meta.txt."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        data, x, y = _records(per_batch, i)
        (d / f"data_batch_{i}.bin").write_bytes(data)
        xs.append(x)
        ys.append(y)
    data, xt, yt = _records(test, 99)
    (d / "test_batch.bin").write_bytes(data)
    (d / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar10_binary_records_read_back_exactly(tmp_path):
    x, y = write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):  # the torchvision-style root, or the folder itself
        x_tr, y_tr, x_te, y_te, classes = read_cifar(root, "cifar10")
        np.testing.assert_array_equal(x_tr, x)
        np.testing.assert_array_equal(y_tr, y)
        assert x_te.shape == (50, 3, 32, 32) and y_te.dtype == np.int64 and classes[3] == "class3"


def test_cifar10_dataset_splits_and_normalisation(tmp_path):
    x, y = write_cifar10(tmp_path)  # 200 training images, 20 per class
    ds = load_dataset(f"cifar10:{tmp_path}", seed=0)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.y_train) == 100 and len(ds.y_val) == 100 and len(ds.y_test) == 50  # half for validation (DARTS)
    assert np.bincount(ds.y_val).tolist() == [10] * 10  # stratified
    # the published per-channel statistics, on raw pixels 0..255
    assert ds.mean == pytest.approx([m * 255 for m in CIFAR_MEAN["cifar10"]])
    assert ds.std == pytest.approx([s * 255 for s in CIFAR_STD["cifar10"]])
    # every training image is a normalised original image with its label
    raw = ds.x_train * np.array(ds.std, np.float32)[None, :, None, None] + np.array(ds.mean, np.float32)[None, :, None,
                                                                                                          None]
    first = np.rint(raw[0]).astype(np.uint8)
    hits = np.flatnonzero((x == first).all(axis=(1, 2, 3)))
    assert len(hits) == 1 and y[hits[0]] == ds.y_train[0]
    full = load_dataset(f"cifar10:{tmp_path}", val_fraction=0)  # a final training: all of it, no validation
    assert len(full.y_train) == 200 and len(full.y_val) == 0
    again = load_dataset(f"cifar10:{tmp_path}", seed=0)
    np.testing.assert_array_equal(again.x_val, ds.x_val)
    other = load_dataset(f"cifar10:{tmp_path}", seed=1)
    assert not np.array_equal(other.y_train, ds.y_train)
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset(f"cifar10:{tmp_path}", val_fraction=1.0)


def test_cifar100_binary_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    data, x, y = _records(300, 1, "cifar100")
    (d / "train.bin").write_bytes(data)
    (d / "test.bin").write_bytes(_records(100, 2, "cifar100")[0])
    x_tr, y_tr, _, y_te, classes = read_cifar(tmp_path, "cifar100")
    np.testing.assert_array_equal(x_tr, x)
    np.testing.assert_array_equal(y_tr, y)
    assert len(classes) == 100 and y_te.max() == 99
    ds = load_dataset(f"cifar100:{tmp_path}", val_fraction=0.2)
    assert ds.num_classes == 100 and len(ds.y_val) == 100 and len(ds.y_train) == 200


def test_torchvision_pickle_layout_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04...")  # a pickle: never loaded
    with pytest.raises(DataError, match="never loads pickles") as e:
        load_dataset(f"cifar10:{tmp_path}")
    assert e.value.file == str(tmp_path) and "cifar-10-binary.tar.gz" in e.value.hint


def _expect(source: str, match: str, file: Path) -> DataError:
    with pytest.raises(DataError, match=match) as e:
        load_dataset(source)
    assert e.value.file == str(file), (e.value.file, file)
    assert e.value.hint
    return e.value


def test_every_bad_cifar_file_is_one_data_error_naming_it(tmp_path):
    _expect(f"cifar10:{tmp_path / 'nope'}", "no such folder", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    _expect(f"cifar10:{tmp_path / 'empty'}", "no cifar-10-batches-bin", tmp_path / "empty")
    write_cifar10(tmp_path / "a")
    d = tmp_path / "a" / "cifar-10-batches-bin"
    (d / "data_batch_3.bin").unlink()
    _expect(f"cifar10:{tmp_path / 'a'}", "missing batch file", d / "data_batch_3.bin")
    write_cifar10(tmp_path / "b")
    d = tmp_path / "b" / "cifar-10-batches-bin"
    blob = (d / "data_batch_2.bin").read_bytes()
    (d / "data_batch_2.bin").write_bytes(blob[:-100])  # truncated mid-record
    _expect(f"cifar10:{tmp_path / 'b'}", "truncated or corrupted", d / "data_batch_2.bin")
    (d / "data_batch_2.bin").write_bytes(b"")
    _expect(f"cifar10:{tmp_path / 'b'}", "truncated or corrupted", d / "data_batch_2.bin")
    bad = bytearray(blob)
    bad[3073 * 7] = 42  # record 7's label byte
    (d / "data_batch_2.bin").write_bytes(bytes(bad))
    err = _expect(f"cifar10:{tmp_path / 'b'}", r"label 42 of record 7 is out of range 0\.\.9", d / "data_batch_2.bin")
    assert "again" in err.hint
    # CIFAR-100 records (3074 bytes) are not CIFAR-10's
    c = tmp_path / "c" / "cifar-100-binary"
    c.mkdir(parents=True)
    (c / "train.bin").write_bytes(_records(10, 0, "cifar100")[0])
    _expect(f"cifar100:{tmp_path / 'c'}", "missing batch file", c / "test.bin")
    blob = bytearray(_records(10, 0, "cifar100")[0])
    blob[3074 * 2] = 25  # a coarse label over 19
    (c / "test.bin").write_bytes(bytes(blob))
    _expect(f"cifar100:{tmp_path / 'c'}", "coarse label 25 of record 2", c / "test.bin")
