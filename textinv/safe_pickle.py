"""Read torch pickles from the internet without running their code.

`torch.load(weights_only=True)` cannot read the original paper code's files: they pickle a
`torch.nn.ParameterDict` (a module), and files from torch 1.11 even break when it is allowed. So every pickle is
read with an unpickler that allows only the handful of globals these formats use, maps `ParameterDict` to a plain
holder, rebuilds MPS/CUDA tensors on the CPU, and refuses anything else before it can run.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import OrderedDict

import numpy as np
import torch

from textinv.errors import UnsafeFileError


class ParameterDictState:
    """Stands in for a pickled `torch.nn.ParameterDict`: keeps its state, builds no module."""

    def __init__(self) -> None:
        self.parameters: dict[str, torch.Tensor] = {}

    def __setstate__(self, state: dict) -> None:
        self.parameters = dict(state.get("_parameters") or {})


def _rebuild_numpy_tensor_on_cpu(data, dtype, device, requires_grad):
    """`torch._utils._rebuild_device_tensor_from_numpy` without the move to the saving device (e.g. 'mps:0')."""
    return torch.from_numpy(np.array(data)).to(dtype=dtype)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _rebuild_numpy_tensor_on_cpu,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch.nn.modules.container", "ParameterDict"): ParameterDictState,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("_codecs", "encode"): __import__("_codecs").encode,
}


def _allowed(module: str, name: str) -> object | None:
    if (module, name) in _ALLOWED:
        return _ALLOWED[(module, name)]
    if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name, None)
    if module == "torch.storage" and name in ("TypedStorage", "UntypedStorage", "_load_from_bytes"):
        return getattr(torch.storage, name) if name != "_load_from_bytes" else None
    if module in ("numpy.dtypes",) and name.endswith("DType"):
        return getattr(np.dtypes, name, None)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _allowed(module, name)
        if found is None:
            raise UnsafeFileError(
                f"refused to load: the file asks to run `{module}.{name}`, which no embedding needs; "
                "it may be malicious, so do not open it with other tools either"
            )
        return found


def _load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs):
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# torch.load takes a pickle *module*: it subclasses `Unpickler` (zip files) or calls `load` (legacy files).
restricted_pickle = types.ModuleType("textinv_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _load
restricted_pickle.loads = _loads
restricted_pickle.__name__ = "pickle"


def load_torch_file(path) -> object:
    """torch.load through the restricted unpickler, every tensor on the CPU."""
    return torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
