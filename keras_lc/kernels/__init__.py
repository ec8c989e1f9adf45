"""Compiled kernels: the region depthwise convolution read from compact rows, in one fused op.

`region_depthwise_taps(values, taps, kernel)` computes, for compact rows `values` `[N, C]` and a
neighbour table `taps` `[N, K]` (`RegionIndex.compact_neighbours`: row indices, N meaning the zero
row outside the region or the image), `out[n] = sum_k values[taps[n, k]] * kernel[k]` `[N, C]`: a
depthwise conv whose cost follows the region's size. Its gradients are the same op with the kernel
mirrored (the neighbour table of a region is symmetric) and a second op for the kernel.

The op is C++ (`region_depthwise_taps.cc`): no TensorFlow op gathers a depthwise conv's taps from
compact rows without kh*kw separate gathers. It is compiled with the installed TensorFlow's headers on
first use (a few seconds, `g++`), into `$KERAS_LC_CACHE` (default `~/.cache/keras_lc`), once per
TensorFlow version, source and CPU. Where that fails (no compiler, no headers) `available()` is False
and the layers use TensorFlow ops, with one warning saying why; `KERAS_LC_KERNELS=off` turns the
compiled kernels off. The kernels are CPU-only and not XLA-compilable: "auto" leaves them out where a
GPU is visible (`preferred()`); with `jit_compile=True` use `KERAS_LC_KERNELS=off`. Exports trace under
`portable()`, so a SavedModel or ONNX file never needs the compiled op (TF Serving, Triton and onnxruntime do
not have it).
"""

import contextlib
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import tensorflow as tf

SOURCE = Path(__file__).with_name("region_depthwise_taps.cc")
_lock = threading.Lock()
_state = {"module": None, "tried": False, "error": None}
_portable = threading.local()


def _cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir():
    """Where compiled kernels are kept: `$KERAS_LC_CACHE`, else `~/.cache/keras_lc`."""
    return Path(os.environ.get("KERAS_LC_CACHE") or Path.home() / ".cache" / "keras_lc")


def _compile():
    compile_flags, link_flags = tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()
    # -march=native: the file is built on the machine that runs it; the CPU's flags are part of the key
    flags = ["-shared", "-fPIC", "-O3", "-march=native", "-w"]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), tf.__version__, platform.machine(), _cpu_flags(),
                                     *compile_flags, *link_flags, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"region_depthwise_taps-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name and renamed: a kill or a parallel build never leaves a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            cmd = [os.environ.get("CXX", "g++"), *flags, str(SOURCE), "-o", tmp, *compile_flags, *link_flags]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise RuntimeError(f"compiling {SOURCE.name} failed: {last}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return tf.load_op_library(str(target))


def _module():
    """The loaded op library, compiling it on first use; None where it cannot be had (warned once)."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if not _state["tried"]:
            if os.environ.get("KERAS_LC_KERNELS", "on").lower() in ("off", "0", "false", "no"):
                _state["error"] = "turned off by KERAS_LC_KERNELS"
            else:
                try:
                    _state["module"] = _compile()
                except (OSError, RuntimeError, subprocess.SubprocessError, tf.errors.OpError) as e:
                    _state["error"] = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    warnings.warn(f"keras_lc: the compiled region depthwise kernel is not available "
                                  f"({_state['error']}); using TensorFlow ops (same numbers, slower).", stacklevel=3)
            _state["tried"] = True
    return _state["module"]


def available():
    """True when the compiled kernels can run here (compiled, loaded and not turned off)."""
    return _module() is not None


def preferred():
    """True when "auto" should take the compiled kernels: available, and no GPU visible (the kernels are CPU-only;
    on a GPU the TensorFlow ops run there instead)."""
    return available() and not tf.config.list_logical_devices("GPU")


def unavailable_reason():
    """Why `available()` is False (None when it is True)."""
    _module()
    return _state["error"]


def in_portable():
    """True inside `portable()` (this thread)."""
    return getattr(_portable, "on", False)


@contextlib.contextmanager
def portable():
    """Within this context (per thread), layers trace TensorFlow ops only: for exports."""
    before = getattr(_portable, "on", False)
    _portable.on = True
    try:
        yield
    finally:
        _portable.on = before


def region_depthwise_taps(values, taps, kernel):
    """`out[n] = sum_k values[taps[n, k]] * kernel[k]`, the row `N` of `values` read as zeros.

    Args:
        values: float32 `[N, C]`, compact rows.
        taps: int32 `[N, K]`, a symmetric neighbour table in `[0, N]` (`RegionIndex.compact_neighbours`):
            if row m is row n's tap k, row n is row m's tap K - 1 - k. The gradient relies on it.
        kernel: float32 `[K, C]`.

    Returns:
        float32 `[N, C]`.
    """
    module = _module()
    if module is None:
        raise RuntimeError(f"the compiled region depthwise kernel is not available: {unavailable_reason()}.")
    return module.keras_lc_region_depthwise_taps(values, taps, kernel)


@tf.RegisterGradient("KerasLcRegionDepthwiseTaps")
def _region_depthwise_taps_grad(op, grad):
    values, taps, kernel = op.inputs
    module = _module()
    # the transpose of a symmetric neighbourhood sum: the same sum with the kernel's taps mirrored
    grad_values = module.keras_lc_region_depthwise_taps(grad, taps, tf.reverse(kernel, [0]))
    grad_kernel = module.keras_lc_region_depthwise_taps_kernel_grad(values, taps, grad)
    return grad_values, None, grad_kernel
