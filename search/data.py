"""Datasets for search: the embedded digits set, user ``.npz`` files and image folders.

``load_dataset(source)`` returns a :class:`Dataset` with fixed, seeded, stratified
train/val/test splits (default 60/20/20) of float32 NCHW images standardised per channel
with the *training* split's mean and std, and int64 labels ``0 .. num_classes-1``.

Sources:

- the string ``"digits"`` (the default; a folder of that name is ``"./digits"`` or a ``Path``):
  scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, pixels 0..16, 10
  classes; the UCI "Optical Recognition of Handwritten Digits" test set), shipped inside this package as ``search/datasets/digits.npz`` (uint8
  arrays ``x`` (1797, 8, 8) and ``y``), so nothing is downloaded and scikit-learn is not
  needed. It was written once with::

      d = sklearn.datasets.load_digits()
      np.savez_compressed("digits.npz", x=d.images.astype(np.uint8), y=d.target.astype(np.uint8))

- a path to an ``.npz`` file with arrays ``x`` (images) and ``y`` (integer labels), loaded
  with ``allow_pickle=False``. ``x`` layouts (``layout=``): ``"NCHW"``, ``"NHWC"``, ``"NHW"``
  (grey, one channel added), or ``"auto"`` (the default): a 3-d ``x`` is NHW; a 4-d ``x`` is
  NCHW when dim 1 has at most 4 entries and dim 3 more, NHWC the other way round, and
  anything else is ambiguous and refused (say ``layout=`` then).
- ``"cifar10:DIR"`` / ``"cifar100:DIR"``: the official binary batches under ``DIR`` (the folder
  holding ``cifar-10-batches-bin/`` / ``cifar-100-binary/``; see :mod:`search.cifar`; torchvision's
  pickle layout is refused, pickles are never loaded). The test set is the official one; the
  validation split is ``val_fraction`` of the training set (default half, as DARTS searches);
  standardised with the published per-channel mean/std of the dataset.
- a folder with one sub-folder per class (``root/<class>/<image>``; classes sorted by name
  get labels 0, 1, ...), read with Pillow (``pip install pillow``). Every image must have the
  same size. Grey images (modes ``1``, ``L``, ``I``, ``I;16``) give one channel; if any image
  is in colour, all are converted to RGB (alpha dropped). Files whose extension is not an
  image extension (``.png .jpg .jpeg .bmp .gif .tif .tiff .pgm .ppm .webp``) are ignored.

Bad input -- a missing file or key, an unreadable file, wrong shapes, labels that are not
integers or not ``0 .. K-1``, NaN/Inf pixels, empty sets or splits -- raises
:class:`DataError` (a ``ValueError``) saying what, where and how to fix it (``.hint``).

Example:
    >>> ds = load_dataset("digits")
    >>> ds.input_shape, ds.num_classes, len(ds.x_train), len(ds.x_val), len(ds.x_test)
    ((1, 8, 8), 10, 1079, 359, 359)
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from archir.errors import ArchirError
from search.cifar import CIFAR_KINDS, CIFAR_MEAN, CIFAR_STD, read_cifar

__all__ = ["Dataset", "DataError", "load_dataset", "split_indices", "DIGITS_PATH", "IMAGE_EXTENSIONS"]

DIGITS_PATH = Path(__file__).resolve().parent / "datasets" / "digits.npz"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
_GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L")


class DataError(ArchirError, ValueError):
    """A dataset that cannot be used, with its file (``e.file``, ``e.where["file"]``) and ``hint`` (how to fix).

    Args:
        message: what is wrong.
        where: the file (or ``file:key``, e.g. ``data.npz:x``) it is wrong in; a mapping is
            taken as :class:`archir.ArchirError`'s ``where``.
        hint: how to fix it (one line).
    """

    def __init__(self, message: str, *, where: str | os.PathLike | Mapping[str, Any] | None = None,
                 hint: str | None = None, **places: Any) -> None:
        if where is not None and not isinstance(where, Mapping):
            where = {"file": str(where)}
        super().__init__(message, where=where, hint=hint, **places)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test splits of a classification dataset (float32 NCHW, standardised; int64 labels).

    Attributes:
        name: ``"digits"``, or the file/folder name.
        x_train, y_train, x_val, y_val, x_test, y_test: the splits.
        num_classes: ``K``; labels are ``0 .. K-1``.
        mean, std: per-channel statistics of the training split used to standardise
            (apply ``(x - mean) / std`` to new raw data before inference).
        classes: class names (folder names; ``"0" .. "K-1"`` otherwise).
        source: where the data came from.
        seed: the split seed.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    source: str
    seed: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"train/val/test={len(self.y_train)}/{len(self.y_val)}/{len(self.y_test)}, seed={self.seed})")


# --------------------------------------------------------------------------- public


def load_dataset(source: str | os.PathLike = "digits", *, seed: int = 0,
                 split: Sequence[float] = (0.6, 0.2, 0.2), layout: str = "auto",
                 val_fraction: float = 0.5) -> Dataset:
    """Load ``source`` and split it into seeded, stratified train/val/test sets.

    Args:
        source: ``"digits"``, a path to an ``.npz`` (``x``, ``y``), or an image folder (one
            sub-folder per class). See the module docstring.
        seed: the split seed (the same seed gives the same splits).
        split: train/val/test fractions (positive, summing to 1).
        layout: layout of an ``.npz``'s ``x``: ``"auto"``, ``"NCHW"``, ``"NHWC"`` or ``"NHW"``.
        val_fraction: ``cifar10:DIR`` / ``cifar100:DIR`` only (their test set is fixed): the
            fraction of the training set carved out, stratified and seeded, as the validation split
            (default 0.5, as DARTS searches; 0 trains on all of it and leaves the validation split
            empty, as a final training does). ``split`` does not apply to them.

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: the source is missing or unreadable, or its contents do not fit.

    Example:
        >>> load_dataset("digits", seed=1).x_train.dtype
        dtype('float32')
    """
    fracs = _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an int, got {seed!r}", hint="pass seed=0 (or any int)")
    kind, _, root = str(source).partition(":") if isinstance(source, str) else ("", "", "")
    if kind in CIFAR_KINDS and root:
        return _load_cifar(kind, root, int(seed), val_fraction)
    if isinstance(source, str) and source == "digits":
        x, y, classes = _read_npz(DIGITS_PATH, "NHW")
        name = "digits"
    else:
        path = Path(source)
        if not path.exists():
            raise DataError("no such file or folder", where=path,
                            hint="give 'digits', a path to an .npz with arrays x and y, or an image folder")
        if path.is_dir():
            x, y, classes = _read_folder(path)
        elif path.suffix.lower() == ".npz":
            x, y, classes = _read_npz(path, layout)
        else:
            raise DataError(f"unsupported dataset file type {path.suffix!r}", where=path,
                            hint="save arrays as .npz (np.savez(path, x=images, y=labels)) or give an image folder")
        name = path.stem if path.is_file() else path.name
    return _make(name, x, y, classes, str(source), int(seed), fracs)


def split_indices(y: np.ndarray, seed: int, split: Sequence[float] = (0.6, 0.2, 0.2)) -> list[np.ndarray]:
    """Stratified train/val/test index arrays of labels ``y`` (each class split by ``split``), seeded.

    Within a class of ``n`` samples the validation and test splits get ``round(n * f)`` each
    (at most what is left), training the rest. Each split's indices come in a seeded random order.
    """
    fracs = _check_split(split)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(len(idx), int(round(len(idx) * fracs[1])))
        n_test = min(len(idx) - n_val, int(round(len(idx) * fracs[2])))
        n_train = len(idx) - n_val - n_test
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    out = []
    for p in parts:
        a = np.concatenate(p) if p else np.zeros(0, dtype=np.int64)
        out.append(a[rng.permutation(len(a))].astype(np.int64))
    return out


# --------------------------------------------------------------------------- reading


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fr = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        fr = ()
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"split must be three positive fractions summing to 1, got {split!r}",
                        hint="e.g. split=(0.6, 0.2, 0.2) for train/val/test")
    return fr  # type: ignore[return-value]


def _read_npz(path: Path, layout: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise DataError(f"cannot open the file ({e.strerror or e})", where=path,
                        hint="check the path and its permissions") from None
    if not is_zip:
        raise DataError("not an .npz file (not a zip archive of .npy arrays)", where=path,
                        hint="write it with numpy.savez(path, x=images, y=labels)")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise DataError(f"missing array(s) {missing}; the file has {keys}", where=path,
                                hint="save with np.savez(path, x=images, y=labels)")
            x, y = f["x"], f["y"]
            for k, a in (("x", x), ("y", y)):
                if not isinstance(a, np.ndarray):  # a member that is not .npy data comes back as raw bytes
                    raise DataError(f"member {k!r} is not a .npy array", where=path,
                                    hint="write the file with numpy.savez(path, x=images, y=labels)")
    except DataError:
        raise
    except ValueError as e:  # object arrays need pickle, which is never used
        raise DataError(f"cannot read the arrays without pickle: {e}", where=path,
                        hint="store plain numeric arrays (not Python objects) in the .npz") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"not a readable .npz file ({type(e).__name__}: {e})", where=path,
                        hint="write it with numpy.savez / numpy.savez_compressed") from None
    x = _to_nchw(x, layout, path)
    return x, _check_labels(y, len(x), path), None


def _to_nchw(x: np.ndarray, layout: str, where: Path) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"x has dtype {x.dtype}, not numbers", where=f"{where}:x",
                        hint="store images as an integer or float array")
    if layout not in ("auto", "NCHW", "NHWC", "NHW"):
        raise DataError(f"unknown layout {layout!r}", hint="use 'auto', 'NCHW', 'NHWC' or 'NHW'")
    if layout == "auto":
        if x.ndim == 3:
            layout = "NHW"
        elif x.ndim == 4 and x.shape[1] <= 4 < x.shape[3]:
            layout = "NCHW"
        elif x.ndim == 4 and x.shape[3] <= 4 < x.shape[1]:
            layout = "NHWC"
        elif x.ndim == 4:
            raise DataError(f"cannot tell the layout of x with shape {x.shape} (channels first or last?)",
                            where=f"{where}:x", hint="pass layout='NCHW' or layout='NHWC'")
        else:
            raise DataError(f"x has shape {x.shape}; images need 3 dims (N, H, W) or 4 (N, C, H, W or N, H, W, C)",
                            where=f"{where}:x", hint="reshape the images, e.g. x.reshape(N, H, W) for flat grey ones")
    want = 3 if layout == "NHW" else 4
    if x.ndim != want:
        raise DataError(f"x has shape {x.shape}; layout {layout} needs {want} dims", where=f"{where}:x",
                        hint="images as (N, C, H, W), (N, H, W, C) or grey (N, H, W)")
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if len(x) == 0:
        raise DataError("x holds no images (the set is empty)", where=f"{where}:x", hint="give at least a few "
                        "images per class")
    if min(x.shape[1:]) < 1:
        raise DataError(f"images have an empty dimension (C, H, W) = {x.shape[1:]}", where=f"{where}:x")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise DataError(f"x has {int(bad.sum())} NaN/Inf values (first in image {first})", where=f"{where}:x",
                            hint="clean or drop those images")
    return np.ascontiguousarray(x)


def _check_labels(y: np.ndarray, n: int, where: Path | str) -> np.ndarray:
    where = f"{where}:y"
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"y has shape {y.shape}; expected ({n},), one label per image", where=where,
                        hint="labels as a 1-d integer array, one per image (not one-hot)")
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise DataError(f"labels have dtype {y.dtype}, not integers", where=where,
                        hint="use integer class indices 0..K-1 (np.unique(y, return_inverse=True) maps names)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(np.nan_to_num(y))))[0])
            raise DataError(f"label {float(y[bad])} at index {bad} is not an integer", where=where,
                            hint="use integer class indices 0..K-1")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(f"label {int(y[i])} at index {i} is out of range (labels must be 0..K-1)", where=where,
                        hint="relabel with np.unique(y, return_inverse=True)[1]")
    k = int(y.max()) + 1 if len(y) else 0
    counts = np.bincount(y, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise DataError(f"labels run 0..{k - 1} but class(es) {empty[:10].tolist()} have no images "
                        "(labels out of range?)", where=where,
                        hint="labels must be 0..K-1 with every class present; relabel with "
                             "np.unique(y, return_inverse=True)[1]")
    if k < 2:
        raise DataError(f"only {k} class(es); a classifier needs at least 2", where=where)
    return y


def _read_folder(root: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("reading an image folder needs Pillow, which is not installed", where=root,
                        hint="pip install pillow (or save your images as an .npz with arrays x and y)") from None
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"found {len(classes)} class folder(s); expected one sub-folder per class (at least 2)",
                        where=root, hint="lay the images out as root/<class name>/<image file>")
    files: list[tuple[Path, int]] = []
    for label, cname in enumerate(classes):
        imgs = sorted(p for p in (root / cname).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not imgs:
            raise DataError(f"class folder {cname!r} holds no images", where=root / cname,
                            hint=f"put image files ({', '.join(IMAGE_EXTENSIONS)}) in it, or remove the folder")
        files += [(p, label) for p in imgs]
    arrays, modes = [], []
    size = None
    for p, _ in files:
        try:
            with Image.open(p) as im:
                im.load()
                if size is None:
                    size = im.size
                elif im.size != size:
                    raise DataError(f"image is {im.size[0]}x{im.size[1]}, others are {size[0]}x{size[1]}", where=p,
                                    hint="resize every image to one size first")
                modes.append(im.mode)
                arrays.append(im.copy())
        except DataError:
            raise
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"cannot read the image ({type(e).__name__}: {e})", where=p,
                            hint="remove or re-save the file") from None
    grey = all(m in _GREY_MODES for m in modes)
    xs = [np.asarray(im.convert("F" if grey else "RGB"), dtype=np.float32) for im in arrays]
    x = np.stack(xs)
    x = x[:, None] if grey else x.transpose(0, 3, 1, 2)
    y = np.array([lab for _, lab in files], dtype=np.int64)
    return np.ascontiguousarray(x), y, tuple(classes)


# --------------------------------------------------------------------------- assembling


def _make(name: str, x: np.ndarray, y: np.ndarray, classes: tuple[str, ...] | None, source: str, seed: int,
          fracs: tuple[float, float, float]) -> Dataset:
    k = int(y.max()) + 1
    tr, va, te = split_indices(y, seed, fracs)
    for part, idx in (("train", tr), ("val", va), ("test", te)):
        if len(idx) == 0:
            raise DataError(f"the {part} split is empty ({len(y)} images, split {fracs})", where=source,
                            hint="give more images (a few per class at least) or change split=")
    xf = x.astype(np.float32)
    mean = xf[tr].mean(axis=(0, 2, 3), dtype=np.float64)
    std = xf[tr].std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)  # a constant channel stays constant (0) instead of dividing by 0
    xf = ((xf - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    return Dataset(name=name, x_train=_ro(xf[tr]), y_train=_ro(y[tr]), x_val=_ro(xf[va]), y_val=_ro(y[va]),
                   x_test=_ro(xf[te]), y_test=_ro(y[te]), num_classes=k,
                   mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                   classes=classes or tuple(str(i) for i in range(k)), source=source, seed=seed)


def _load_cifar(kind: str, root: str, seed: int, val_fraction: float) -> Dataset:
    """CIFAR from its binary batches: the fixed test set, a seeded stratified validation split carved
    out of the training set, standardised with the dataset's published per-channel mean and std."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.integer, np.floating)) \
            or not 0 <= float(val_fraction) < 1:
        raise DataError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}", where=root,
                        hint="e.g. 0.5 (half of the training set, as DARTS searches) or 0 (a final training)")
    x_tr, y_tr, x_te, y_te, classes = read_cifar(root, kind)
    k = len(classes)
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in range(k):
        idx = np.flatnonzero(y_tr == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * float(val_fraction)))
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    tr_i, va_i = np.concatenate(tr), np.concatenate(va)
    tr_i, va_i = tr_i[rng.permutation(len(tr_i))], va_i[rng.permutation(len(va_i))]
    if len(tr_i) == 0:
        raise DataError(f"the train split is empty ({len(y_tr)} training images, val_fraction {val_fraction})",
                        where=root, hint="give more images or a smaller val_fraction")
    mean = np.array(CIFAR_MEAN[kind], dtype=np.float64) * 255.0
    std = np.array(CIFAR_STD[kind], dtype=np.float64) * 255.0

    def norm(a: np.ndarray) -> np.ndarray:
        out = a.astype(np.float32)
        out -= mean.astype(np.float32)[None, :, None, None]
        out /= std.astype(np.float32)[None, :, None, None]
        return out

    return Dataset(name=kind, x_train=_ro(norm(x_tr[tr_i])), y_train=_ro(y_tr[tr_i]), x_val=_ro(norm(x_tr[va_i])),
                   y_val=_ro(y_tr[va_i]), x_test=_ro(norm(x_te)), y_test=_ro(y_te), num_classes=k,
                   mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), classes=classes,
                   source=f"{kind}:{root}", seed=seed)


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


_CACHED: dict[str, Dataset] = {}


def cached_dataset(spec: str) -> "Dataset":
    """:func:`load_dataset` of ``spec`` once per process (a worker trains many candidates on it)."""
    if spec not in _CACHED:
        _CACHED[spec] = load_dataset(spec)
    return _CACHED[spec]
