"""Fused CPU kernels for the accumulators: `native.c`, compiled on first use, loaded by ctypes.

On the CPU, most of the statistics' cost is not arithmetic but passes over memory: each torch
op reads a layer's [tokens, d_mlp] activations once more and often writes a temporary. The
kernels in `native.c` read the activations once per statistic, in place (BOS rows skipped, no
copy), and keep the top lists as per-neuron heaps, so a candidate costs a sift-down instead of a
sort. They split the neurons over OpenMP threads, in the same libgomp thread pool as torch (a
second pool would fight torch's spinning workers for the cores).

The pure-torch code in each accumulator is the reference and the path for every other device;
the tests run both and require equal results. The kernels are built with the system C compiler
(`cc`, or `$CC`) into `~/.cache/mechscope/native/`, keyed by the source and the machine. Set
`MECHSCOPE_NATIVE=0` to use torch only; if no compiler works, the torch path is used and one
warning says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ("-O3", "-march=native", "-std=c11", "-fopenmp", "-fPIC", "-shared")
_P = ctypes.c_void_p
_I = ctypes.c_int64
_I32 = ctypes.c_int32
_SIGNATURES = {
    "ms_moments": (None, [_P, _P, _I, _I, _P, _P, _P, _P, _P]),
    "ms_top": (_I, [_P, _P, _I, _I, _I, _I, _P, _P, _I, _P, _P, _P, _P, _I, _P, _P]),
    "ms_hist": (_I, [_P, _P, _P, _I, _I, _I, _I, _I32, _I32, _I32, _I, _P, _P, _P, _P]),
}


def enabled(device: str | torch.device) -> bool:
    """Whether the accumulators on `device` should use the kernels."""
    return torch.device(device).type == "cpu" and library() is not None


@cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("MECHSCOPE_NATIVE", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"mechscope: native CPU kernels unavailable ({e}); using torch only", stacklevel=2)
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    lib.ms_tile.restype = _I
    if lib.ms_tile() != TILE:
        raise RuntimeError(f"native.c and native.py disagree on TILE ({lib.ms_tile()} vs {TILE})")
    return lib


def _build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc) found")
    source = _SOURCE.read_bytes()
    machine = f"{platform.machine()} {_cpu_flags()} {cc}"
    tag = hashlib.sha256(source + repr(_FLAGS).encode() + machine.encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("MECHSCOPE_CACHE", Path.home() / ".cache" / "mechscope")) / "native"
    target = cache_dir / f"stats-{tag}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: concurrent builds never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    try:
        done = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise OSError(f"{cc} failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
        os.replace(tmp, target)
        for old in cache_dir.glob("stats-*.so"):  # builds of older sources (a loaded one stays mapped)
            if old != target:
                old.unlink(missing_ok=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor()


TILE = 128  # columns per OpenMP work item, as in native.c


def scratch(d: int, per_column: int) -> torch.Tensor:
    """Output space for a kernel: per_column int64 per column, then one count per tile."""
    return torch.empty(d * per_column + -(-d // TILE), dtype=torch.int64)


def _ptr(t: torch.Tensor, dtype: torch.dtype) -> int:
    if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"native kernel needs a contiguous {dtype} CPU tensor, got {t.dtype} {tuple(t.shape)}")
    return t.data_ptr()


def moments(acts: torch.Tensor, skip: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor,
            positive: torch.Tensor, mn: torch.Tensor, mx: torch.Tensor) -> None:
    """Add one layer's non-BOS rows (acts [rows, d]) into the column moments, in place."""
    lib, (n_rows, d) = library(), acts.shape
    args = (_ptr(acts, torch.float32), _ptr(skip, torch.uint8), n_rows, d)
    lib.ms_moments(*args, _ptr(total, torch.float64), _ptr(total_sq, torch.float64), _ptr(positive, torch.int64),
                   _ptr(mn, torch.float32), _ptr(mx, torch.float32))


def top(acts: torch.Tensor, skip: torch.Tensor, first_pos: int, seq_len: int, rec, ex,
        fresh: torch.Tensor) -> torch.Tensor:
    """Offer one layer's non-BOS rows to the record heaps, and each window's strongest row per
    neuron to the example heaps (`heap.HeapTop`; rows are whole windows of `seq_len`).
    Returns [n, 2] (neuron, payload slot) of example entries that entered in this call; their
    rows are in ex.row. `fresh` is `scratch(d, 2 * K)`."""
    lib, (n_rows, d) = library(), acts.shape
    if n_rows % seq_len:
        raise ValueError(f"{n_rows} rows are not whole windows of {seq_len}")
    k = ex.capacity
    n = lib.ms_top(_ptr(acts, torch.float32), _ptr(skip, torch.uint8), n_rows, d, first_pos, seq_len,
                   _ptr(rec.keys, torch.int64), _ptr(rec.thr, torch.float32), rec.capacity,
                   _ptr(ex.keys, torch.int64), _ptr(ex.thr, torch.float32), _ptr(ex.slot, torch.int32),
                   _ptr(ex.row, torch.int32), k, _ptr(fresh, torch.int64), fresh[d * 2 * k:].data_ptr())
    return fresh[: 2 * n].reshape(-1, 2)


def hist(acts: torch.Tensor, rows: torch.Tensor, row_keys: torch.Tensor, pos_range: tuple[int, int],
         bins: tuple[int, int, int, int], counts: torch.Tensor, slot_keys: torch.Tensor,
         won: torch.Tensor) -> torch.Tensor:
    """Count the sampled rows into the histogram slots and offer their min-hash keys to the band
    samples. Returns the slots whose sample changed in this call. `bins` = (first quarter-octave,
    last, zero bin, bins per neuron); `won` is `scratch(d, bins per neuron)`."""
    lib, (_, d) = library(), acts.shape
    n = lib.ms_hist(_ptr(acts, torch.float32), _ptr(rows, torch.int64), _ptr(row_keys, torch.int64), rows.numel(),
                    d, *pos_range, *bins, _ptr(counts, torch.int64), _ptr(slot_keys, torch.int64),
                    _ptr(won, torch.int64), won[d * bins[3]:].data_ptr())
    return won[:n]
