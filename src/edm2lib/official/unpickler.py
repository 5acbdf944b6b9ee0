"""Code-free reading of official EDM2 snapshot pickles: allow-list unpickler, inert records (docs/official.md)

Nothing in the file is imported or executed: every global is looked up in `ALLOWED_GLOBALS`, persistent
objects become `PersistentRecord`s whose embedded `module_src` is dropped unread, and each tensor storage
(a nested `torch.save` blob) is loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class UnsafePickleError(ValueError):
    """The pickle references a global outside the allow-list; nothing from it was executed."""


class PersistentRecord:
    """Inert stand-in for an object of an official `@persistent_class` (Precond, MPConv, encoders...)."""

    def __init__(self, class_name: str, state: dict[str, Any], version: Any = None):
        self.class_name = class_name
        self.state = state
        self.version = version

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"


class ModuleRecord:
    """Inert stand-in for a plain torch module container (`ModuleDict`): keeps its pickled `__dict__`."""

    class_name = "ModuleDict"
    state: dict[str, Any] = {}  # replaced by __setstate__; empty if the pickle recorded no state  # noqa: RUF012

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


class _EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict that tolerates pickled instance state."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    # docs/official.md: meta = {type, version, module_src, class_name, state}; module_src is never looked at.
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise ValueError("persistent object record is not {type: 'class', class_name, state: dict, ...}")
    return PersistentRecord(str(meta.get("class_name")), dict(meta["state"]), meta.get("version"))


def _load_storage(blob: Any) -> Any:
    if not isinstance(blob, bytes):
        raise ValueError(f"tensor storage record holds {type(blob).__name__}, expected bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notice
        storage = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise ValueError(f"tensor storage blob holds {type(storage).__name__}, expected a storage")
    return storage


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    # requires_grad, backward hooks and metadata are dropped: a converted network holds plain tensors.
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise ValueError(f"tensor record holds {type(storage).__name__}, expected a storage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._utils._rebuild_tensor_v2(
            storage, offset, size, stride, False, collections.OrderedDict()
        )


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"parameter record holds {type(data).__name__}, expected a tensor")
    return data


# The exact globals an official snapshot pickle references (docs/official.md), each mapped to what it becomes.
# numpy's array constructors are numpy's own (they only build arrays from already-unpickled values).
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleRecord,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,  # files written with numpy < 2
}


try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar

# What a reference-statistics pickle may reference (docs/official.md: a dict of numpy arrays): numpy only.
NUMPY_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "scalar"): _np_scalar,  # numpy scalars such as a numpy num_images
    ("numpy.core.multiarray", "scalar"): _np_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves globals only through an allow-list (`ALLOWED_GLOBALS` by default)."""

    allowed = ALLOWED_GLOBALS
    kind = "official EDM2 pickles"

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing global '{module}.{name}': it is not in the allow-list of {self.kind}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}: official EDM2 pickles have none")


def load_official_pickle(path: str | Path) -> dict[str, Any]:
    """The top-level dict of an official snapshot pickle, with `PersistentRecord`s for its objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        try:
            data = RestrictedUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}; nothing was executed") from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            RuntimeError,
            OverflowError,
        ) as e:
            raise ValueError(
                f"{path}: not a readable EDM2 snapshot pickle (truncated or not a pickle?): {e}"
            ) from e
    if not isinstance(data, dict) or not isinstance(data.get("ema"), PersistentRecord):
        raise ValueError(f"{path}: pickle holds no 'ema' network; expected an official EDM2 snapshot dict")
    return data


def module_tensors(record: PersistentRecord | ModuleRecord, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(state_dict key, tensor) pairs of a recorded module tree, in `state_dict()` order (docs/official.md)"""
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            yield prefix + name, value
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            yield prefix + name, value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord | ModuleRecord):
            raise ValueError(f"module '{prefix + name}' is a {type(child).__name__}, not a recorded module")
        yield from module_tensors(child, f"{prefix}{name}.")
