"""Run state on disk is data, never code.

Every state file under ``--output`` (a method's ``export_state()`` for the stage that starts
from it, a Tune trial's loop state, a loop checkpoint inside a Train checkpoint) is written by
:func:`save_state` and read by :func:`load_state`, which loads with
``torch.load(weights_only=True)``: the file may hold tensors, numbers, strings, bytes, ``None``, dtypes/devices and lists, tuples, sets and
dicts of them, and nothing from it is imported or called. On a cluster the results folder is
shared storage every node reads, so a planted file must not run code on any of them.

The one encode/decode layer for what ``weights_only`` cannot hold:

* numpy arrays -> tensors (tagged, back to numpy on loading); numpy scalars -> Python scalars;
* dataclass instances (configs) -> plain dicts of their fields (loaded as dicts: a file never
  names a class to rebuild);
* ``torch.Generator`` -> its state tensor (tagged, a seeded generator again on loading);
* ``pathlib`` paths -> strings; subclasses of str/int/float (enums, ``np.str_``) -> the base.

Anything else is a programming error at save time (``TypeError``), so a file that would not
load is never written.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections import OrderedDict
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from deepclust.errors import UserError

# a Ray Train checkpoint's payload (the loop's resume state)
CHECKPOINT_FILE = "state.pt"

NUMPY_TAG = "__deepclust_ndarray__"
GENERATOR_TAG = "__deepclust_generator__"
_TAGS = (NUMPY_TAG, GENERATOR_TAG)
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def encode(obj: Any, where: str = "state") -> Any:
    """``obj`` as a tree that ``torch.load(weights_only=True)`` reads back."""
    if type(obj) in _LEAVES or isinstance(obj, torch.Size):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"{where} is a numpy array of Python objects; store numbers")
        native = obj.astype(obj.dtype.newbyteorder("="), order="C")  # a copy; 0-d stays 0-d
        return {NUMPY_TAG: torch.from_numpy(native)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str | PurePath):
        return str(obj)
    if isinstance(obj, int | float):  # IntEnum and the like: the plain value
        return int(obj) if isinstance(obj, int) else float(obj)
    if isinstance(obj, torch.Generator):
        return {GENERATOR_TAG: obj.get_state()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: encode(getattr(obj, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, dict):
        if len(obj) == 1 and next(iter(obj)) in _TAGS:
            raise TypeError(f"{where} uses the reserved key {next(iter(obj))!r}")
        items = ((encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")) for k, v in obj.items())
        if isinstance(obj, OrderedDict):  # a state_dict: keep its _metadata (module versions)
            out = OrderedDict(items)
            if hasattr(obj, "_metadata"):
                out._metadata = encode(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
            return out
        return dict(items)
    if isinstance(obj, list | tuple):
        out_seq = [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out_seq if isinstance(obj, list) else tuple(out_seq)
    if isinstance(obj, set | frozenset):  # loaded as a set
        return {encode(v, f"{where} item") for v in obj}
    raise TypeError(f"{where} is a {type(obj).__qualname__}, which a state file cannot hold")


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode` on what ``torch.load(weights_only=True)`` returned."""
    if isinstance(obj, dict):
        if len(obj) == 1 and NUMPY_TAG in obj:
            return obj[NUMPY_TAG].numpy()
        if len(obj) == 1 and GENERATOR_TAG in obj:
            gen = torch.Generator()
            gen.set_state(obj[GENERATOR_TAG])
            return gen
        out = type(obj)((k, decode(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(decode(v) for v in obj)
    return obj


def save_state(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to ``path`` (atomically: a reader never sees half a file)."""
    path = Path(path)
    data = encode(obj)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _damaged(path: str | Path) -> str:
    return (
        f"{path} is not a state file this version wrote (it is damaged or in another format); "
        "delete it and rerun"
    )


def load_state(path: str | Path) -> dict[str, Any]:
    """The state dict :func:`save_state` wrote to ``path``; nothing in the file is executed.

    A file that holds anything else (a pickle of Python objects, a damaged file, not a dict)
    is a UserError naming the file: the fix is to delete it and rerun the stage that writes it.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"state file {path} is missing; rerun the stage that writes it") from None
    except OSError as exc:
        raise UserError(f"cannot read state file {path} ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:  # refused by the weights-only unpickler
        if "global" in str(exc).lower():  # it names a class or function to import and call
            raise UserError(
                f"{path} is not a state file this version wrote (it holds Python objects that "
                "would run code on loading); delete it and rerun"
            ) from None
        raise UserError(_damaged(path)) from None
    except Exception:  # a truncated or foreign file (torch raises RuntimeError and others)
        raise UserError(_damaged(path)) from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path} is not a state file this version wrote (it holds a "
            f"{type(data).__name__}, not a dict); delete it and rerun"
        )
    try:
        return decode(data)
    except Exception:  # a tag around something encode() never writes
        raise UserError(_damaged(path)) from None
