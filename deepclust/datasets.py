"""DATASETS: one spec per benchmark protocol, plus ``parquet:<path>`` and ``folder:<path>``.

A spec loads one split as an :class:`ImageSet`: labels plus exactly one image source (uint8
pixel arrays, encoded bytes, file paths, or the row groups of Parquet files), not yet decoded.
Decoding happens in the embedding stage. A Parquet benchmark is opened by its footers and its
label column only: the image bytes stay in the files until the process that decodes them reads
its row groups (:func:`read_parquet_part`), so the driver's memory does not grow with them.
Standard sets load through torchvision from ``data_root`` (``download=True`` only when the user
asks for it); every "not there" failure becomes a one-line :class:`DatasetUnavailable` naming
the path looked at and how to get the data.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepclust.errors import UserError, unknown_name
from deepclust.registry import Registry


class DatasetUnavailable(UserError):
    """The dataset's files are not where we looked."""


UNLABELLED = -1  # the label of every image of an unlabelled collection (num_classes == 0)
PARQUET_BATCH_ROWS = 512  # rows per batch read from a row group (a few MB of JPEGs)
PARQUET_PART_ROWS = 8 * PARQUET_BATCH_ROWS  # rows per read task: larger row groups are split


@dataclass(frozen=True)
class ParquetPart:
    """Rows ``[first_idx, first_idx + num_rows)`` of a benchmark: rows ``skip`` onwards of one
    row group of ``file`` (``file_row``: the first one's row number in the file)."""

    file: str
    row_group: int
    skip: int
    num_rows: int
    first_idx: int
    file_row: int


@dataclass(frozen=True)
class ParquetSource:
    """Where a Parquet benchmark's images are (not the images): parts in ``idx`` order."""

    parts: tuple[ParquetPart, ...]
    image_column: str
    label_column: str | None  # None: an unlabelled collection (labels read as UNLABELLED)

    def __len__(self) -> int:
        return sum(p.num_rows for p in self.parts)

    def head(self, n: int) -> ParquetSource:
        parts = []
        for p in self.parts:
            if p.first_idx >= n:
                break
            parts.append(replace(p, num_rows=min(p.num_rows, n - p.first_idx)))
        return replace(self, parts=tuple(parts))

    def part_of(self, idx: int) -> ParquetPart:
        i = bisect.bisect_right([p.first_idx for p in self.parts], idx) - 1
        if i < 0 or idx >= self.parts[i].first_idx + self.parts[i].num_rows:
            raise IndexError(f"row {idx} is outside the benchmark's {len(self)} rows")
        return self.parts[i]

    def read(self, part: ParquetPart, rows: int = PARQUET_BATCH_ROWS) -> Iterator[dict]:
        return read_parquet_part(part, self.image_column, self.label_column, rows)

    def batches(self, batch_size: int) -> Iterator[dict]:
        """``{"idx", "label", "encoded"}`` batches of exactly ``batch_size`` rows (the last may
        be shorter), read part by part."""
        pending: list[dict] = []
        for part in self.parts:
            for batch in self.read(part, batch_size):
                pending.append(batch)
                while sum(len(b["idx"]) for b in pending) >= batch_size:
                    merged = _concat_batches(pending)
                    yield _slice_batch(merged, 0, batch_size)
                    pending = [_slice_batch(merged, batch_size, None)]
        if pending and sum(len(b["idx"]) for b in pending):
            yield _concat_batches(pending)


def _concat_batches(batches: list[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _slice_batch(batch: dict, start: int, stop: int | None) -> dict:
    return {k: v[start:stop] for k, v in batch.items()}


def read_parquet_part(
    part: ParquetPart, image_column: str, label_column: str | None, rows: int = PARQUET_BATCH_ROWS
) -> Iterator[dict]:
    """The part's rows as ``{"idx", "label", "encoded"}`` numpy batches of up to ``rows``.

    Runs where the images are decoded (a Ray Data task), never in the driver: only this part's
    row group is read, batch by batch, and batches before ``skip`` are dropped unconverted.
    """
    pf = pq.ParquetFile(part.file)
    pos, end = 0, part.skip + part.num_rows  # row numbers inside the row group
    columns = [image_column] + ([label_column] if label_column else [])
    batches = pf.iter_batches(batch_size=rows, row_groups=[part.row_group], columns=columns)
    for batch in batches:
        lo, hi = max(part.skip, pos), min(end, pos + batch.num_rows)
        if hi > lo:
            batch = batch.slice(lo - pos, hi - lo)
            first = part.first_idx + lo - part.skip
            yield {
                "idx": np.arange(first, first + batch.num_rows, dtype=np.int64),
                "label": batch.column(label_column).to_numpy().astype(np.int64)
                if label_column
                else np.full(batch.num_rows, UNLABELLED, dtype=np.int64),
                "encoded": np.asarray(batch.column(image_column).to_pylist(), dtype=object),
            }
        pos += batch.num_rows
        if pos >= end:
            break


def _parquet_images(source: ParquetSource, rows: np.ndarray) -> pa.Array:
    """The encoded images at ``rows`` (ascending) of a Parquet source, read part by part."""
    starts = np.array([p.first_idx for p in source.parts], dtype=np.int64)
    which = np.searchsorted(starts, rows, side="right") - 1
    chunks = []
    for i in np.unique(which):
        part = source.parts[int(i)]
        images = _row_group_images(part.file, part.row_group, source.image_column)
        local = rows[which == i] - part.first_idx + part.skip
        chunks.append(images.take(pa.array(local)))
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.binary())


@functools.lru_cache(maxsize=2)
def _row_group_images(file: str, row_group: int, column: str) -> pa.Array:
    """One row group's image column, kept for the next random read nearby (finetuning reads
    images one by one; two groups hold the current and the next)."""
    table = pq.ParquetFile(file).read_row_group(row_group, columns=[column])
    return table.column(column).combine_chunks()


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a dataset: N labels and N undecoded images.

    An unlabelled collection has ``num_classes == 0``, no class names and every label
    ``UNLABELLED``: it is clustered and never scored. A *view* (:meth:`take`: a class
    selection, a long-tailed draw, labels hidden) keeps the set it was drawn from in ``base``
    and its rows there in ``base_rows``, so its embeddings are read from the base's instead of
    being computed again.

    Exactly one of ``pixels`` ((N,H,W) or (N,H,W,3) uint8), ``encoded`` ((N,) binary),
    ``paths`` ((N,) str) or ``parquet`` (row groups of Parquet files, read on demand) is set.
    ``fingerprint`` identifies the content for cache keys.
    """

    name: str
    split: str
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str
    pixels: np.ndarray | None = None
    encoded: pa.Array | None = None
    paths: tuple[str, ...] | None = None
    parquet: ParquetSource | None = None
    origin: str = ""  # where it came from (a file or folder), for error messages
    base: ImageSet | None = None  # a view's source set (see ``take``)
    base_rows: np.ndarray | None = None  # (N,) the view's rows in ``base``

    def __post_init__(self) -> None:
        sources = (self.pixels, self.encoded, self.paths, self.parquet)
        set_sources = [s for s in sources if s is not None]
        if len(set_sources) != 1:
            raise ValueError("an ImageSet needs exactly one of pixels / encoded / paths / parquet")
        if len(set_sources[0]) != len(self.labels):
            raise ValueError("image source and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0

    def take(
        self,
        rows: np.ndarray,
        tag: str,
        labels: np.ndarray | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> ImageSet:
        """A view: the images at ``rows`` (ascending), named ``<split>[<tag>]``, with
        ``labels`` / ``class_names`` (default: the rows' own; ``class_names=()`` hides them).
        A Parquet set's chosen images are read into memory once (a view is a subset)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(self)):
            raise ValueError("view rows must be ascending, distinct and inside the set")
        if class_names is None:
            class_names = self.class_names
        if labels is None:
            labels = self.labels[rows]
        if not class_names:
            labels = np.full(len(rows), UNLABELLED, dtype=np.int64)
        root, root_rows = (
            (self.base, self.base_rows[rows]) if self.base is not None else (self, rows)
        )
        src: dict[str, object] = {}
        if self.pixels is not None:
            src["pixels"] = self.pixels[rows]
        elif self.paths is not None:
            src["paths"] = tuple(self.paths[i] for i in rows)
        elif self.encoded is not None:
            src["encoded"] = self.encoded.take(pa.array(rows))
        else:
            src["encoded"] = _parquet_images(self.parquet, rows)
        return ImageSet(
            name=self.name,
            split=f"{self.split}[{tag}]",
            labels=np.asarray(labels, dtype=np.int64),
            num_classes=len(class_names),
            class_names=tuple(class_names),
            fingerprint=_hash(self.fingerprint, tag, rows, labels, class_names),
            origin=self.origin,
            base=root,
            base_rows=root_rows,
            **src,
        )

    @property
    def source_column(self) -> str:
        if self.pixels is not None:
            return "pixels"
        return "path" if self.paths is not None else "encoded"

    def source_slice(self, start: int, stop: int) -> np.ndarray | pa.Array | list:
        """In-memory sources only (a Parquet source is read by parts: ``parquet.read``)."""
        if self.parquet is not None:
            raise TypeError("a Parquet ImageSet is read by parts, not sliced in memory")
        if self.pixels is not None:
            return self.pixels[start:stop]
        if self.encoded is not None:
            return self.encoded.slice(start, stop - start)
        return list(self.paths[start:stop])

    def source_item(self, idx: int):
        """The undecoded image ``idx``: a uint8 array, encoded bytes or a path."""
        if self.pixels is not None:
            return self.pixels[idx]
        if self.encoded is not None:
            return self.encoded[idx].as_py()
        if self.parquet is not None:
            part = self.parquet.part_of(idx)
            images = _row_group_images(part.file, part.row_group, self.parquet.image_column)
            return images[part.skip + idx - part.first_idx].as_py()
        return self.paths[idx]

    @property
    def loaded_split(self) -> str:
        """The split name the dataset loader knows (``subset`` appends ``[:n]`` to ``split``)."""
        return self.split.partition("[")[0]

    def subset(self, n: int) -> ImageSet:
        """The first ``n`` images (datasets are stored shuffled or are sliced per class by
        callers that need balance); a distinct fingerprint keeps caches apart."""
        if n >= len(self):
            return self
        if self.parquet is not None:
            return replace(
                self,
                split=f"{self.split}[:{n}]",
                labels=self.labels[:n],
                fingerprint=f"{self.fingerprint}[:{n}]",
                parquet=self.parquet.head(n),
            )
        src = {
            self.source_column if self.source_column != "path" else "paths": self.source_slice(0, n)
        }
        if "paths" in src:
            src["paths"] = tuple(src["paths"])
        return ImageSet(
            name=self.name,
            split=f"{self.split}[:{n}]",
            labels=self.labels[:n],
            num_classes=self.num_classes,
            class_names=self.class_names,
            fingerprint=f"{self.fingerprint}[:{n}]",
            origin=self.origin,
            **src,
        )

    def describe(self, idx: int) -> str:
        """Human location of image ``idx`` (path, or file + row)."""
        if self.base is not None:
            return self.base.describe(int(self.base_rows[idx]))
        if self.paths is not None:
            return self.paths[idx]
        if self.parquet is not None:
            part = self.parquet.part_of(idx)
            return f"{part.file} row {part.file_row + idx - part.first_idx}"
        return f"{self.origin or self.name} row {idx}"

    def batches(self, batch_size: int):
        """Yield ``{"idx", "label", <source>}`` numpy batches (the Ray Data batch format)."""
        if self.parquet is not None:
            yield from self.parquet.batches(batch_size)
            return
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            src = self.source_slice(start, stop)
            if isinstance(src, pa.Array):
                src = np.asarray(src.to_pylist(), dtype=object)
            yield {
                "idx": np.arange(start, stop, dtype=np.int64),
                "label": self.labels[start:stop],
                self.source_column: np.asarray(src)
                if self.pixels is not None
                else np.asarray(src, dtype=object),
            }


Loader = Callable[[str, Path, bool], ImageSet]  # (split, data_root, download) -> ImageSet


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark protocol: where the data comes from and which splits fit / evaluate."""

    name: str
    load: Loader
    fit_split: str
    eval_split: str
    description: str
    splits: tuple[str, ...] = field(default=())


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _hash(*parts: object) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def _file_fingerprint(paths: list[Path]) -> str:
    """The files' bytes (not their path or mtime): a copied, moved or re-mounted dataset keeps
    its cached embeddings. Streamed in 4 MiB chunks, so memory stays flat whatever the size;
    the cost is one BLAKE2 pass over the files (about 0.1 s for CIFAR-10's 46 MB)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(f"{p.stat().st_size}\0".encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _pixel_set(name, split, pixels, labels, class_names, origin="") -> ImageSet:
    source = np.ascontiguousarray(pixels, dtype=np.uint8)
    return _image_set(name, split, pixels, labels, class_names, origin, pixels=source)


def _path_set(name, split, paths, labels, class_names, origin="") -> ImageSet:
    paths = tuple(str(p) for p in paths)
    return _image_set(name, split, paths, labels, class_names, origin, paths=paths)


def _image_set(name, split, content, labels, class_names, origin, **source) -> ImageSet:
    """An ImageSet over ``source`` (``pixels=`` or ``paths=``), fingerprinted by ``content``."""
    labels = np.asarray(labels, dtype=np.int64)
    return ImageSet(
        name=name,
        split=split,
        labels=labels,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        fingerprint=_hash(name, split, content, labels),
        origin=origin,
        **source,
    )


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise unknown_name(f"split of {name}", split, splits)


def _missing(name: str, path: Path, how: str) -> DatasetUnavailable:
    return DatasetUnavailable(f"dataset '{name}' not found at {path}; {how}")


_TV_HOW = "rerun with --download (needs internet) or point --data-root at the folder that holds it"


def _split_dataset(
    name: str, cls: Callable[..., object], folder: str, split: str, data_root: Path, download: bool
):
    """A torchvision dataset whose constructor takes ``split=`` (train or test), under
    ``data_root / folder``."""
    _check_split(name, split, ("train", "test"))
    return _torchvision(
        name, lambda: cls(str(data_root), split=split, download=download), data_root / folder
    )


def _torchvision(name: str, factory: Callable[[], object], where: Path, how: str = _TV_HOW):
    """Construct a torchvision dataset, turning its 'not found' errors into one line."""
    try:
        return factory()
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        text = str(exc).lower()
        if any(w in text for w in ("download", "not found", "corrupt")) or not isinstance(
            exc, RuntimeError
        ):
            raise _missing(name, where, how) from exc
        raise


# --- digits: the embedded default -------------------------------------------------------


def _digits_loader(split: str, data_root: Path, download: bool) -> ImageSet:
    from sklearn.datasets import load_digits

    _check_split("digits", split, ("all",))
    d = load_digits()
    # 8x8 intensities in 0..16 -> uint8 grey; the backbone's resize upsamples them.
    pixels = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return _pixel_set(
        "digits",
        split,
        pixels,
        d.target,
        [str(c) for c in range(10)],
        origin="sklearn.datasets.load_digits",
    )


DATASETS.add(
    "digits",
    DatasetSpec(
        "digits",
        _digits_loader,
        "all",
        "all",
        "scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; offline)",
        ("all",),
    ),
)


# --- torchvision array datasets ---------------------------------------------------------


def _cifar_parquet(name: str, data_root: Path, split: str) -> ImageSet | None:
    """The ``{data_root}/{name}/{split}.parquet`` layout (e.g. shared/data/cifar10)."""
    path = data_root / name / f"{split}.parquet"
    return load_parquet(path, name=name, split=split) if path.is_file() else None


def _mnist_loader(split: str, data_root: Path, download: bool) -> ImageSet:
    from torchvision.datasets import MNIST

    _check_split("mnist", split, ("train", "test"))
    ds = _torchvision(
        "mnist",
        lambda: MNIST(str(data_root), train=split == "train", download=download),
        data_root / "MNIST",
    )
    return _pixel_set(
        "mnist",
        split,
        ds.data.numpy(),
        ds.targets.numpy(),
        ds.classes,
        origin=str(data_root / "MNIST"),
    )


def _cifar_loader(name: str, coarse: bool = False) -> Loader:
    def load(split: str, data_root: Path, download: bool) -> ImageSet:
        from torchvision.datasets import CIFAR10, CIFAR100

        _check_split(name, split, ("train", "test"))
        if name == "cifar10" and (pq_set := _cifar_parquet(name, data_root, split)) is not None:
            return pq_set
        cls, folder = (
            (CIFAR10, "cifar-10-batches-py")
            if name == "cifar10"
            else (CIFAR100, "cifar-100-python")
        )
        ds = _torchvision(
            name,
            lambda: cls(str(data_root), train=split == "train", download=download),
            data_root / folder,
            _TV_HOW
            + (f" (or put {split}.parquet in {data_root / name})" if name == "cifar10" else ""),
        )
        labels, classes = np.asarray(ds.targets), ds.classes
        if coarse:
            base = data_root / folder
            with open(base / ("train" if split == "train" else "test"), "rb") as f:
                labels = np.asarray(pickle.load(f, encoding="latin1")["coarse_labels"])
            with open(base / "meta", "rb") as f:
                classes = pickle.load(f, encoding="latin1")["coarse_label_names"]
        return _pixel_set(name, split, ds.data, labels, classes, origin=str(data_root / folder))

    return load


def _stl10_loader(split: str, data_root: Path, download: bool) -> ImageSet:
    from torchvision.datasets import STL10

    ds = _split_dataset("stl10", STL10, "stl10_binary", split, data_root, download)
    return _pixel_set(
        "stl10",
        split,
        ds.data.transpose(0, 2, 3, 1),
        ds.labels,
        ds.classes,
        origin=str(data_root / "stl10_binary"),
    )


DATASETS.add(
    "mnist",
    DatasetSpec("mnist", _mnist_loader, "train", "test", "MNIST (torchvision)", ("train", "test")),
)
DATASETS.add(
    "cifar10",
    DatasetSpec(
        "cifar10",
        _cifar_loader("cifar10"),
        "train",
        "test",
        "CIFAR-10 (torchvision layout, or {data_root}/cifar10/{train,test}.parquet)",
        ("train", "test"),
    ),
)
DATASETS.add(
    "cifar100",
    DatasetSpec(
        "cifar100",
        _cifar_loader("cifar100"),
        "train",
        "test",
        "CIFAR-100, 100 fine classes (torchvision)",
        ("train", "test"),
    ),
)
DATASETS.add(
    "cifar100_20",
    DatasetSpec(
        "cifar100_20",
        _cifar_loader("cifar100_20", coarse=True),
        "train",
        "test",
        "CIFAR-100 with its 20 superclasses as labels (SCAN/TEMI protocol)",
        ("train", "test"),
    ),
)
DATASETS.add(
    "stl10",
    DatasetSpec(
        "stl10",
        _stl10_loader,
        "train",
        "test",
        "STL-10 labelled splits (torchvision)",
        ("train", "test"),
    ),
)


# --- ImageNet class subsets (SCAN / TEMI protocol) --------------------------------------


def _imagenet_subset_loader(n: int) -> Loader:
    name = f"imagenet{n}"

    def load(split: str, data_root: Path, download: bool) -> ImageSet:
        _check_split(name, split, ("train", "val"))
        root = data_root / "imagenet" / split
        subset_file = data_root / "imagenet_subsets" / f"imagenet_{n}.txt"
        if not root.is_dir():
            raise _missing(
                name,
                root,
                "ImageNet cannot be downloaded automatically; place the "
                "ILSVRC2012 train/val class folders (wnid names) there",
            )
        if not subset_file.is_file():
            raise _missing(
                name,
                subset_file,
                f"put the list of {n} wnids (one per line, the "
                "class subset used by SCAN and TEMI) there",
            )
        wnids = [w.split()[0] for w in subset_file.read_text().splitlines() if w.strip()]
        missing = [w for w in wnids if not (root / w).is_dir()]
        if missing:
            raise _missing(name, root / missing[0], f"{len(missing)} subset classes are missing")
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            files = sorted(p for p in (root / wnid).iterdir() if p.is_file())
            paths += files
            labels += [label] * len(files)
        return _path_set(name, split, paths, labels, wnids, origin=str(root))

    return load


for _n in (50, 100, 200):
    DATASETS.add(
        f"imagenet{_n}",
        DatasetSpec(
            f"imagenet{_n}",
            _imagenet_subset_loader(_n),
            "train",
            "val",
            f"{_n}-class ImageNet subset: {{data_root}}/imagenet/{{train,val}} + "
            f"{{data_root}}/imagenet_subsets/imagenet_{_n}.txt",
            ("train", "val"),
        ),
    )


# --- fine-grained sets (GCD benchmarks) ------------------------------------------------


def _cub_loader(split: str, data_root: Path, download: bool) -> ImageSet:
    _check_split("cub", split, ("train", "test"))
    root = data_root / "CUB_200_2011"
    if not (root / "images.txt").is_file():
        raise _missing(
            "cub",
            root,
            "download CUB_200_2011.tgz from the Caltech-UCSD site and "
            "extract it under --data-root (torchvision has no CUB loader)",
        )

    def table(fname: str) -> dict[int, str]:
        rows = (line.split(maxsplit=1) for line in (root / fname).read_text().splitlines())
        return {int(k): v.strip() for k, v in rows}

    images, labels, is_train = (
        table(f) for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt")
    )
    classes = [v for _, v in sorted(table("classes.txt").items())]
    want = "1" if split == "train" else "0"
    ids = [i for i in sorted(images) if is_train[i] == want]
    return _path_set(
        "cub",
        split,
        [root / "images" / images[i] for i in ids],
        [int(labels[i]) - 1 for i in ids],
        classes,
        origin=str(root),
    )


def _scars_loader(split: str, data_root: Path, download: bool) -> ImageSet:
    from torchvision.datasets import StanfordCars

    ds = _split_dataset("scars", StanfordCars, "stanford_cars", split, data_root, download)
    paths, labels = zip(*ds._samples, strict=True) if ds._samples else ((), ())
    return _path_set(
        "scars", split, paths, labels, ds.classes, origin=str(data_root / "stanford_cars")
    )


def _aircraft_loader(split: str, data_root: Path, download: bool) -> ImageSet:
    from torchvision.datasets import FGVCAircraft

    _check_split("aircraft", split, ("trainval", "test"))
    ds = _torchvision(
        "aircraft",
        lambda: FGVCAircraft(
            str(data_root), split=split, annotation_level="variant", download=download
        ),
        data_root / "fgvc-aircraft-2013b",
    )
    return _path_set(
        "aircraft",
        split,
        ds._image_files,
        ds._labels,
        ds.classes,
        origin=str(data_root / "fgvc-aircraft-2013b"),
    )


DATASETS.add(
    "cub",
    DatasetSpec(
        "cub",
        _cub_loader,
        "train",
        "test",
        "CUB-200-2011 birds ({data_root}/CUB_200_2011)",
        ("train", "test"),
    ),
)
DATASETS.add(
    "scars",
    DatasetSpec(
        "scars",
        _scars_loader,
        "train",
        "test",
        "Stanford Cars (torchvision layout)",
        ("train", "test"),
    ),
)
DATASETS.add(
    "aircraft",
    DatasetSpec(
        "aircraft",
        _aircraft_loader,
        "trainval",
        "test",
        "FGVC-Aircraft, 100 variants (torchvision)",
        ("trainval", "test"),
    ),
)


# --- generic parquet / folder ------------------------------------------------------------


def load_parquet(
    path: Path,
    name: str | None = None,
    split: str = "all",
    image_column: str | None = None,
    label_column: str = "label",
) -> ImageSet:
    """A parquet file, or folder of shards, with a binary image column and an int label column.

    The image column is ``image_column`` or the only binary column. Class names come from the
    schema metadata key ``classes`` (comma-separated) when present. Without a ``label_column``
    the set is an unlabelled collection (clustered, never scored). Only the footers and the
    label column are read here; ``idx`` runs over the files in path order, then their rows.
    """
    path = Path(path)
    if not path.exists():
        raise _missing(
            name or f"parquet:{path}",
            path,
            "check the path (a .parquet file or a folder of .parquet shards)",
        )
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise _missing(name or f"parquet:{path}", path, "the folder holds no .parquet files")
    try:
        schema = pq.read_schema(files[0])
        image_column = image_column or _only_binary_column(schema)
        labelled = label_column in schema.names
        _check_columns(path, schema, image_column, label_column if labelled else None)
        parts, labels = _parquet_manifest(files, image_column, label_column if labelled else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"cannot read parquet at {path}: {str(exc).splitlines()[0]}") from exc
    if labelled:
        classes = (schema.metadata or {}).get(b"classes", b"").decode()
        named = tuple(c.strip() for c in classes.split(",")) if classes else None
        labels, class_names = checked_labels(labels, str(path), label_column, named)
    else:
        labels, class_names = np.full(len(labels), UNLABELLED, dtype=np.int64), ()
    return ImageSet(
        name=name or f"parquet:{path}",
        split=split,
        labels=labels,
        num_classes=len(class_names),
        class_names=class_names,
        fingerprint=_file_fingerprint(files),
        parquet=ParquetSource(parts, image_column, label_column if labelled else None),
        origin=str(path),
    )


def checked_labels(
    values: pa.Array | np.ndarray,
    where: str,
    column: str = "label",
    class_names: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """A user's label column as (N,) int64 class ids in [0, C) and the C class names.

    Integer labels keep their ids when they index ``class_names`` (the file's listed classes)
    or are exactly 0..C-1; any other set of integers (negative, 1-based, sparse), or strings,
    is mapped in sorted order onto 0..C-1, and the names record the mapping (name i = the
    original value of class i). Null, fractional or non-numeric, non-string labels, an empty set and a single class
    raise a one-line UserError before any stage runs.
    """
    arr = pa.array(values) if isinstance(values, np.ndarray) else values
    n = len(arr)
    if n == 0:
        raise UserError(f"{where} holds no rows; point the benchmark at a non-empty dataset")
    if arr.null_count:
        first = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise UserError(
            f"{where}: {arr.null_count} null label(s) in column '{column}' (first at row "
            f"{first}); give every image a label"
        )
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr, kind = arr.cast(kind.value_type), kind.value_type
    if pa.types.is_floating(kind):
        floats = arr.to_numpy(zero_copy_only=False)
        if not np.isfinite(floats).all() or (floats != np.round(floats)).any():
            bad = floats[~np.isfinite(floats) | (floats != np.round(floats))][0]
            raise UserError(
                f"{where}: label column '{column}' holds non-integer values (e.g. {bad}); "
                "use integer or string class labels"
            )
        raw: np.ndarray = floats.astype(np.int64)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        raw = arr.to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        raw = np.asarray(arr.to_pylist(), dtype=object)
    else:
        raise UserError(
            f"{where}: label column '{column}' has type {kind}; use integer or string labels"
        )
    values_sorted, ids = np.unique(raw, return_inverse=True)
    if len(values_sorted) < 2:
        raise UserError(
            f"{where}: every image has the label {str(values_sorted[0])!r}; clustering is scored "
            "against at least 2 classes"
        )
    if raw.dtype != object and values_sorted[0] >= 0:
        top = int(values_sorted[-1])
        if class_names and top < len(class_names):  # ids index the listed class names
            return raw, tuple(class_names)
        if top == len(values_sorted) - 1:  # exactly 0..C-1
            return raw, tuple(str(i) for i in range(top + 1))
    return ids.astype(np.int64), tuple(str(v) for v in values_sorted)


def _only_binary_column(schema: pa.Schema) -> str | None:
    binary = [
        f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]
    return binary[0] if len(binary) == 1 else None


def _check_columns(path: Path, schema: pa.Schema, image_column, label_column: str | None) -> None:
    """One binary image column, and the label column where the set is labelled."""
    if image_column not in schema.names or (label_column and label_column not in schema.names):
        raise UserError(
            f"{path} needs one binary image column (and, to be scored, an integer 'label' "
            f"column); found {schema.names}"
        )


def _parquet_manifest(
    files: list[Path], image_column: str, label_column: str | None
) -> tuple[tuple[ParquetPart, ...], pa.Array]:
    """Every file's row groups (from its footer), cut into read parts of at most
    ``PARQUET_PART_ROWS`` rows, and the label column (the only column read in full; without
    one, a null per row)."""
    parts, labels, first = [], [], 0
    for f in files:
        _check_columns(f, pq.read_schema(f), image_column, label_column)
        meta, file_row = pq.read_metadata(f), 0
        for rg in range(meta.num_row_groups):
            rows = meta.row_group(rg).num_rows
            for skip in range(0, rows, PARQUET_PART_ROWS):
                n = min(PARQUET_PART_ROWS, rows - skip)
                parts.append(ParquetPart(str(f.resolve()), rg, skip, n, first, file_row + skip))
                first += n
            file_row += rows
        if label_column:
            labels.append(pq.read_table(f, columns=[label_column]).column(0).combine_chunks())
        else:
            labels.append(pa.nulls(file_row, pa.int64()))
    labels = pa.concat_arrays(labels) if labels else pa.array([], pa.int64())
    return tuple(parts), labels


def _parquet_spec(path: Path) -> DatasetSpec:
    split_files = {s: path / f"{s}.parquet" for s in ("train", "test")}
    if path.is_dir() and all(f.is_file() for f in split_files.values()):

        def load(split: str, data_root: Path, download: bool) -> ImageSet:
            _check_split(f"parquet:{path}", split, ("train", "test"))
            return load_parquet(split_files[split], name=f"parquet:{path}", split=split)

        return DatasetSpec(
            f"parquet:{path}", load, "train", "test", f"parquet shards at {path}", ("train", "test")
        )

    def load_all(split: str, data_root: Path, download: bool) -> ImageSet:
        _check_split(f"parquet:{path}", split, ("all",))
        return load_parquet(path, name=f"parquet:{path}")

    return DatasetSpec(f"parquet:{path}", load_all, "all", "all", f"parquet at {path}", ("all",))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) of an ImageFolder tree: one sub-folder per class (sorted,
    as torchvision numbers them), image files found recursively in sorted order.

    Symbolic links are followed, but each real folder is entered once and each real file kept
    once (the first path that reaches it), so a link loop or a folder linked twice never
    repeats images."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class sub-folder in {root}")
    paths, labels, seen_dirs, seen_files = [], [], set(), set()
    for label, name in enumerate(classes):
        found = _image_files(root / name, seen_dirs, seen_files)
        if not found:
            raise FileNotFoundError(
                f"class folder '{name}' holds no image ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += found
        labels += [label] * len(found)
    return paths, labels, classes


def _image_files(
    root: Path, seen_dirs: set[str] | None = None, seen_files: set[str] | None = None
) -> list[str]:
    """Every image file under ``root`` (recursively, sorted; each real folder entered once and
    each real file kept once, across calls that share ``seen_dirs`` / ``seen_files``)."""
    seen_dirs = set() if seen_dirs is None else seen_dirs
    seen_files = set() if seen_files is None else seen_files
    paths = []
    for folder, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            subdirs[:] = []
            continue
        seen_dirs.add(real)
        subdirs.sort()
        for file in sorted(files):
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, file)
            real_file = os.path.realpath(path)
            if real_file in seen_files or not os.path.isfile(real_file):
                continue
            seen_files.add(real_file)
            paths.append(path)
    return paths


def _has_top_level_images(root: Path) -> bool:
    return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(root))


def load_folder(root: Path, name: str, split: str = "all") -> ImageSet:
    """An ImageFolder (one sub-folder per class), numbered as torchvision's ImageFolder; a
    folder with images at its top level, or without sub-folders, is an unlabelled collection
    in any layout (every image below it, clustered and never scored)."""
    if not root.is_dir():
        raise _missing(name, root, "check the path (a folder of images)")
    if _has_top_level_images(root) or not any(d.is_dir() for d in os.scandir(root)):
        paths = _image_files(root)
        if not paths:
            raise _missing(name, root, f"the folder holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        labels = np.full(len(paths), UNLABELLED, dtype=np.int64)
        return _path_set(name, split, paths, labels, (), origin=str(root))
    try:
        paths, labels, classes = scan_image_folder(root)
    except FileNotFoundError as exc:
        raise _missing(name, root, str(exc).splitlines()[0]) from exc
    return _path_set(name, split, paths, labels, classes, origin=str(root))


def _folder_spec(root: Path) -> DatasetSpec:
    name = f"folder:{root}"
    eval_dir = next((d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and eval_dir:

        def load(split: str, data_root: Path, download: bool) -> ImageSet:
            _check_split(name, split, ("train", eval_dir))
            return load_folder(root / split, name, split)

        return DatasetSpec(
            name, load, "train", eval_dir, f"image folders at {root}", ("train", eval_dir)
        )

    def load_all(split: str, data_root: Path, download: bool) -> ImageSet:
        _check_split(name, split, ("all",))
        return load_folder(root, name)

    return DatasetSpec(name, load_all, "all", "all", f"image folder at {root}", ("all",))


def resolve_dataset(name: str) -> DatasetSpec:
    """A registered benchmark, or ``parquet:<path>`` / ``folder:<path>``."""
    for prefix, build in (("parquet:", _parquet_spec), ("folder:", _folder_spec)):
        if name.startswith(prefix):
            path = Path(os.path.expanduser(name[len(prefix) :]))
            if not path.exists():
                raise DatasetUnavailable(f"dataset '{name}' not found: {path} does not exist")
            return build(path)
    return DATASETS.get(name, hint="or parquet:<path> / folder:<path>")


def aligned_eval(fit: ImageSet, ev: ImageSet) -> ImageSet:
    """``ev`` with its class ids in ``fit``'s numbering (matched by class name): an eval split
    may lack some classes, never have one the fit split does not."""
    if ev is fit or ev.class_names == fit.class_names:
        return ev
    index = {name: i for i, name in enumerate(fit.class_names)}
    present = [ev.class_names[c] for c in np.unique(ev.labels)]
    extra = [name for name in present if name not in index]
    if extra:
        raise UserError(
            f"{ev.name}: the {ev.split} split has classes the {fit.split} split lacks "
            f"({', '.join(extra[:5])}); both splits must share one set of class labels"
        )
    remap = np.array([index.get(name, -1) for name in ev.class_names], dtype=np.int64)
    return replace(
        ev,
        labels=remap[ev.labels],
        num_classes=fit.num_classes,
        class_names=fit.class_names,
        fingerprint=_hash(ev.fingerprint, fit.class_names),  # the stored labels changed
    )
