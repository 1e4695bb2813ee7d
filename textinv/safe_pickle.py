"""Read torch pickles from the internet without running their code.

`torch.load(weights_only=True)` cannot read the original paper code's files: they pickle a
`torch.nn.ParameterDict` (a module), and files from torch 1.11 even break when it is allowed. So every pickle is
read with an unpickler that allows only the handful of globals these formats use, maps `ParameterDict` to a plain
holder, rebuilds MPS/CUDA tensors on the CPU, and refuses anything else before it can run.
"""

from __future__ import annotations

import io
import math
import pickle
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from textinv.errors import EmbeddingFormatError, UnsafeFileError


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


MAX_TENSOR_BYTES = 64 * 2**20  # as formats.container.MAX_DECODED_BYTES: the largest real embedding is 1.4 MiB


def too_much(nbytes: int | None, what: str) -> EmbeddingFormatError:
    """The error for a file that declares more bytes than an embedding could hold (`nbytes` None: unknown)."""
    size = f" of {nbytes / 2**30:.3g} GiB" if nbytes else ""
    return EmbeddingFormatError(
        f"the file asks for a {what}{size}, more memory than a real embedding can need (they are kilobytes; "
        f"textinv reads at most {MAX_TENSOR_BYTES >> 20} MiB); refusing it"
    )


def _bounded(rebuild):
    """A tensor rebuild function that first checks what the file declares: a shape within the file's storage
    and under MAX_TENSOR_BYTES. Unchecked, a shape larger than a (resizable, legacy) storage makes torch grow the
    storage to it: a few bytes on disk could ask for gigabytes."""

    def checked(storage, storage_offset, size, stride, *args, **kwargs):
        if not (isinstance(size, tuple | list | torch.Size) and isinstance(stride, tuple | list | torch.Size)
                and len(size) == len(stride) and isinstance(storage_offset, int) and storage_offset >= 0
                and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
            raise EmbeddingFormatError("the file's tensor has a malformed shape; it is not an embedding")
        untyped = getattr(storage, "_untyped_storage", storage)  # a TypedStorage's bytes, without its warning
        itemsize, nbytes = (storage.dtype.itemsize if hasattr(storage, "dtype") else 1), untyped.nbytes()
        numel = math.prod(size)
        extent = storage_offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) + 1 if numel else 0
        if max(numel, extent) * itemsize > MAX_TENSOR_BYTES:
            raise too_much(max(numel, extent) * itemsize, f"tensor of shape {list(size)[:8]}")
        if nbytes > MAX_TENSOR_BYTES:
            raise too_much(nbytes, "storage")
        if extent * itemsize > nbytes:
            raise EmbeddingFormatError(f"the file's tensor of shape {list(size)[:8]} lies past the end of its data; "
                                  "the file is truncated or corrupt")
        return rebuild(storage, storage_offset, size, stride, *args, **kwargs)

    return checked


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): _bounded(torch._utils._rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _bounded(torch._utils._rebuild_tensor_v2),
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


# The unbounded rebuilds, for model checkpoints (gigabytes by design, read by `models.checkpoints`)
_MODEL_REBUILDS = {("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
                   ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2}


def _allowed(module: str, name: str, *, model: bool = False) -> object | None:
    """The object a pickle may name as `module.name`, or None; `model` lifts the embedding size bound."""
    if model and (module, name) in _MODEL_REBUILDS:
        return _MODEL_REBUILDS[(module, name)]
    if (module, name) in _ALLOWED:
        return _ALLOWED[(module, name)]
    if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name, None)
    if module == "torch.storage" and name in ("TypedStorage", "UntypedStorage", "_load_from_bytes"):
        return getattr(torch.storage, name) if name != "_load_from_bytes" else None
    if module in ("numpy.dtypes",) and name.endswith("DType"):
        return getattr(np.dtypes, name, None)
    return None


# The pure-Python unpickler, not the C one: the C unpickler keeps its memo in an array sized by the largest index a
# pickle names, so a 5-byte LONG_BINPUT of index 2^30 allocates and zeroes gigabytes (found by the fuzzing of issue
# 25); the Python one keeps a dict. Embedding pickles are kilobytes, so its speed does not matter.
_Unpickler = pickle._Unpickler


class RestrictedUnpickler(_Unpickler):
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
    """torch.load through the restricted unpickler, every tensor on the CPU, from the file's bytes in memory (the
    caller bounds its size): a pickle that declares a string of gigabytes then gets what the file holds, where a
    file object's read(n) would first allocate n bytes. A legacy (non-zip) file's declared storages are summed
    first, as torch allocates them whole before it reads their bytes."""
    data = Path(path).read_bytes()
    if not data.startswith(b"PK\x03\x04"):
        declared = legacy_storage_bytes(data)
        if declared > MAX_TENSOR_BYTES:
            raise too_much(declared, "storage")
    return torch.load(io.BytesIO(data), map_location="cpu", pickle_module=restricted_pickle, weights_only=False)


# Bytes per element of each storage class a legacy file may name (an unknown one counts as 8, the widest).
_ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                  "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "Untyped": 1}


class _Stub:
    """What the scan below builds instead of every object: it runs nothing and accepts anything."""

    def __init__(self, *args, **kwargs) -> None:
        self.name = ""

    def __call__(self, *args, **kwargs) -> _Stub:
        return _Stub()

    def __setstate__(self, state) -> None:
        pass


class _StorageScan(_Unpickler):
    """Unpickles with stubs for every global and records each storage's declared element count (a legacy torch
    file names its storages as persistent ids: ('storage', type, key, location, numel, view))."""

    def __init__(self, file) -> None:
        super().__init__(file)
        self.declared: dict[object, int] = {}

    def find_class(self, module: str, name: str):
        stub = type(name if isinstance(name, str) and name.isidentifier() else "stub", (_Stub,), {})
        stub.storage_name = name
        return stub

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
            kind = getattr(pid[1], "storage_name", "")
            size = _ELEMENT_BYTES.get(kind.removesuffix("Storage") if isinstance(kind, str) else "", 8)
            key = pid[2] if isinstance(pid[2], str | int) else id(pid)
            self.declared[key] = max(0, pid[4]) * size
        return _Stub()


def legacy_storage_bytes(data: bytes) -> int:
    """The bytes the storages of a legacy torch file (its bytes) declare, all together, found without running or
    allocating anything; what was declared before a malformed part counts (torch would have allocated it by then)."""
    f = io.BytesIO(data)
    scan = None
    try:
        for _ in range(3):  # the magic number, the protocol version, the system info
            _StorageScan(f).load()
        scan = _StorageScan(f)
        scan.load()
    except Exception:  # a malformed pickle: torch's own reader says what is wrong
        pass
    return sum(scan.declared.values()) if scan is not None else 0
