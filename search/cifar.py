"""CIFAR-10 and CIFAR-100 from their official *binary* batches on disk (never downloaded, never unpickled).

The binary distributions (https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 binary version"):

- CIFAR-10, folder ``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (training)
  and ``test_batch.bin``; every record is 3073 bytes: 1 label byte (0..9) then 3072 pixel bytes
  (1024 red, 1024 green, 1024 blue, each a 32x32 image in row-major order), i.e. CHW uint8.
  ``batches.meta.txt`` lists the class names, one a line.
- CIFAR-100, folder ``cifar-100-binary/``: ``train.bin`` and ``test.bin``; every record is 3074
  bytes: the coarse label byte (0..19), the fine label byte (0..99), then the 3072 pixel bytes.
  ``fine_label_names.txt`` / ``coarse_label_names.txt`` list the names.

``read_cifar(root, "cifar10")`` takes the folder that holds ``cifar-10-batches-bin/`` (the root
you would give torchvision's ``CIFAR10(root, download=False)``) or that folder itself. torchvision's
own layout, ``root/cifar-10-batches-py/``, holds *Python pickles*; archir never loads pickles (a
pickle can run any code), so a root that only has that folder is refused with a :class:`DataError`
that says where to get the binary version. The record count of each file is free (a test writes a
few hundred images in the exact format); a file that is not a whole number of records is reported
as truncated or corrupted, a label byte out of range names the file and the record.

Example:
    >>> x_tr, y_tr, x_te, y_te, classes = read_cifar("data", "cifar10")   # doctest: +SKIP
    >>> x_tr.shape, x_tr.dtype, classes[:2]                                # doctest: +SKIP
    ((50000, 3, 32, 32), dtype('uint8'), ('airplane', 'automobile'))
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["read_cifar", "CIFAR_KINDS", "CIFAR_MEAN", "CIFAR_STD", "CIFAR10_CLASSES"]

PIXELS = 3 * 32 * 32
#: kind -> (folder, training files, test file, label bytes per record, number of classes, names file)
CIFAR_KINDS = {
    "cifar10": ("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1, 10,
                "batches.meta.txt"),
    "cifar100": ("cifar-100-binary", ("train.bin",), "test.bin", 2, 100, "fine_label_names.txt"),
}
_PY_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_URL = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"}

#: per-channel mean and std of the training images scaled to [0, 1] (the DARTS reference's constants
#: for CIFAR-10; the usual ones for CIFAR-100)
CIFAR_MEAN = {"cifar10": (0.49139968, 0.48215827, 0.44653124), "cifar100": (0.5070751592, 0.4865488733, 0.4409178433)}
CIFAR_STD = {"cifar10": (0.24703233, 0.24348505, 0.26158768), "cifar100": (0.2673342858, 0.2564384629, 0.2761504713)}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _error(*args, **kw):
    from search.data import DataError  # search.data imports this module

    return DataError(*args, **kw)


def _find_folder(root: Path, kind: str) -> Path:
    folder, train_files, *_ = CIFAR_KINDS[kind]
    if not root.exists():
        raise _error("no such folder", where=root,
                     hint=f"give the folder that holds {folder}/ (unpack {_URL[kind]} there)")
    if not root.is_dir():
        raise _error(f"{kind} data must be a folder, not a file", where=root,
                     hint=f"give the folder that holds {folder}/ (unpack {_URL[kind]} there)")
    if root.name == folder or (root / train_files[0]).is_file():
        return root
    if (root / folder).is_dir():
        return root / folder
    py = _PY_FOLDERS[kind]
    if (root / py).is_dir() or root.name == py:
        raise _error(f"found only torchvision's {py}/ (Python pickle files); archir never loads pickles, which can "
                     "run arbitrary code", where=root,
                     hint=f"download the binary version {_URL[kind]} and unpack it into {root} (it adds {folder}/)")
    raise _error(f"no {folder}/ folder here (nor its files)", where=root,
                 hint=f"unpack {_URL[kind]} into this folder (tar xzf), or give the folder that holds {folder}/")


def _read_file(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    label_bytes, classes = CIFAR_KINDS[kind][3], CIFAR_KINDS[kind][4]
    rec = label_bytes + PIXELS
    if not path.is_file():
        raise _error("missing batch file" if not path.exists() else "is not a file", where=path,
                     hint=f"the {kind} binary version has {', '.join(CIFAR_KINDS[kind][1] + (CIFAR_KINDS[kind][2],))}; "
                          f"unpack {_URL[kind]} again")
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise _error(f"cannot read the file ({e.strerror or e})", where=path,
                     hint="check the path and its permissions") from None
    if raw.size == 0 or raw.size % rec:
        raise _error(f"truncated or corrupted: {raw.size} bytes is not a whole number of {rec}-byte records "
                     f"({label_bytes} label byte(s) + {PIXELS} pixels)", where=path,
                     hint=f"unpack {_URL[kind]} again (is this the {kind} binary version, not another dataset?)")
    recs = raw.reshape(-1, rec)
    if kind == "cifar100":
        coarse = recs[:, 0]
        if coarse.max() >= 20:
            i = int(np.argmax(coarse >= 20))
            raise _error(f"coarse label {int(coarse[i])} of record {i} is out of range 0..19 (corrupted?)",
                         where=path, hint=f"unpack {_URL[kind]} again")
    y = recs[:, label_bytes - 1].astype(np.int64)
    if y.max() >= classes:
        i = int(np.argmax(y >= classes))
        raise _error(f"label {int(y[i])} of record {i} is out of range 0..{classes - 1} (corrupted, or the file of "
                     "another dataset?)", where=path,
                     hint=f"unpack {_URL[kind]} again; CIFAR-100 files need --dataset cifar100:DIR")
    x = recs[:, label_bytes:].reshape(-1, 3, 32, 32)
    return x, y


def _names(folder: Path, kind: str) -> tuple[str, ...]:
    k = CIFAR_KINDS[kind][4]
    p = folder / CIFAR_KINDS[kind][5]
    try:
        names = tuple(s.strip() for s in p.read_text(encoding="utf-8").splitlines() if s.strip())
    except (OSError, UnicodeDecodeError):
        names = ()
    if len(names) == k:
        return names
    return CIFAR10_CLASSES if kind == "cifar10" else tuple(str(i) for i in range(k))


def read_cifar(root: str | os.PathLike, kind: str = "cifar10"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read the binary CIFAR-10 / CIFAR-100 batches under ``root``.

    Args:
        root: the folder holding ``cifar-10-batches-bin/`` (``cifar-100-binary/``), or that folder.
        kind: ``"cifar10"`` or ``"cifar100"`` (fine labels).

    Returns:
        ``(x_train, y_train, x_test, y_test, classes)``: uint8 ``(N, 3, 32, 32)`` images, int64 labels,
        the class names.

    Raises:
        search.data.DataError: the folder or a file is missing, only the pickle layout is there, a
            file is truncated or corrupted, or a label is out of range (naming the file).
    """
    if kind not in CIFAR_KINDS:
        raise _error(f"unknown CIFAR kind {kind!r}", hint=f"use one of {sorted(CIFAR_KINDS)}")
    folder = _find_folder(Path(root), kind)
    _, train_files, test_file, *_ = CIFAR_KINDS[kind]
    parts = [_read_file(folder / f, kind) for f in train_files]
    x_te, y_te = _read_file(folder / test_file, kind)
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return x_tr, y_tr, x_te, y_te, _names(folder, kind)
