"""Where a frozen model's bytes live while it trains: weights cast to the training dtype without a second full copy,
parts the step does not use moved off the device and brought back when something needs them, and freed memory
given back to the system.

On the CPU, diffusers and transformers memory-map safetensors files: a weight read from a diffusers folder takes
memory only once it is touched, in pages that belong to the file. `module.to(dtype)` touches every page of a file
and keeps them all until the file's last tensor is converted, so for a moment the process holds the whole float32
file and its new copy (SD1.5's UNet cast to bf16: 5.3 GB at the peak, 2.0 GB after). `cast_frozen` converts one
tensor at a time and gives that tensor's file pages back as soon as its copy exists. `release` does the same for a
module left as it is: its pages are read again from the file the next time it runs. Only clean, file-backed,
private pages are given back (Linux `madvise(MADV_DONTNEED)`, which for such a page means "read it again from the
file when it is next touched"); any other memory is left alone, and off Linux nothing is released.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import re
import sys
from bisect import bisect_right
from collections.abc import Iterable, Iterator

import torch
from torch import nn

MADV_DONTNEED = 4  # <sys/mman.h> on Linux
M_MMAP_THRESHOLD = -3  # <malloc.h> (glibc mallopt)
MMAP_THRESHOLD = 1 << 20
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$")


def _libc():
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def return_freed_memory() -> bool:
    """Make blocks of 1 MiB and more come from, and go back to, the system (glibc's mmap threshold, fixed).

    glibc serves large blocks with mmap, but after the first such block is freed it raises that threshold (up to
    32 MiB) and keeps later ones in its heap, where freed memory stays with the process. A training step allocates
    its activations (MiBs each at Stable Diffusion's size) and frees them after the backward pass: with the moving
    threshold they stayed resident and fragmented the next step's (SD1.5 at 512 px on the CPU: the peak grew from
    6.1 to 6.5 GB between steps 1 and 2; with the fixed threshold 5.7 GB both). True if the threshold was set."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _clean_file_mappings() -> list[tuple[int, int]]:
    """Sorted (start, end) of this process's private file mappings in which no page was ever written."""
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return []
    out, current = [], None
    for line in text.splitlines():
        m = _MAPPING.match(line)
        if m:
            start, end, perms, inode, path = m.groups()
            file_backed = inode != "0" and path.startswith("/") and perms[3] == "p"
            current = (int(start, 16), int(end, 16)) if file_backed else None
        elif current and line.startswith("Anonymous:"):
            if int(line.split()[1]) == 0:
                out.append(current)
            current = None
    return sorted(out)


class _Pages:
    """Gives back the file pages of tensors, within the clean file mappings found when it was made."""

    def __init__(self):
        self.libc = _libc()
        self.mappings = _clean_file_mappings() if self.libc else []
        self.starts = [s for s, _ in self.mappings]
        self.page = os.sysconf("SC_PAGE_SIZE") if self.libc else 4096
        self.released = 0

    def release(self, t: torch.Tensor) -> None:
        if not self.mappings or t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return
        begin = t.data_ptr()
        end = begin + t.numel() * t.element_size()
        k = bisect_right(self.starts, begin) - 1
        if k < 0 or end > self.mappings[k][1]:
            return  # not (wholly) in a clean file mapping: anonymous memory is never handed back
        lo, hi = self.mappings[k]
        a = max(lo, begin - begin % self.page)
        b = min(hi, end + (-end) % self.page)  # a page shared with a neighbour is read back from the file too
        if self.libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), MADV_DONTNEED) == 0:
            self.released += b - a


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def release(modules: Iterable[nn.Module]) -> int:
    """Give back the file pages of `modules`' weights (they are read again from the file on their next use);
    returns the bytes given back. Weights that are not clean file pages stay where they are."""
    pages = _Pages()
    for module in modules:
        for t in _tensors(module):
            pages.release(t.detach())
    return pages.released


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> int:
    """`module.to(dtype)` for frozen weights, one tensor at a time (a parameter that learns is left as it is):
    each floating parameter and buffer is copied in
    `dtype` and its file pages (if it was memory-mapped) are given back before the next, so the peak is the new copy
    plus one tensor rather than the old file plus the new copy. The values are `.to(dtype)`'s. Returns the bytes
    of file pages given back."""
    pages = _Pages()
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype and not p.requires_grad:
                old = p.data
                p.data = old.to(dtype)
                pages.release(old)
        for name, b in list(sub.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                setattr(sub, name, b.to(dtype))
                pages.release(b)
    return pages.released


class Offload:
    """Modules the training step does not run, kept off the device between the moments something else needs them
    (image logs, validation prompts). On a GPU they wait in CPU memory; on the CPU their file pages are given back
    and read again from the model's files when they next run (weights loaded any other way stay resident)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.modules: list[nn.Module] = []

    def add(self, module: nn.Module) -> None:
        self.modules.append(module)
        self.park()

    def park(self) -> None:
        if self.device.type == "cpu":
            release(self.modules)
        else:
            for module in self.modules:
                module.to("cpu")

    @contextlib.contextmanager
    def back(self) -> Iterator[None]:
        """The parked modules on the device for the duration of the block, parked again after it."""
        if not self.modules:
            yield
            return
        if self.device.type != "cpu":
            for module in self.modules:
                module.to(self.device)
        try:
            yield
        finally:
            self.park()
