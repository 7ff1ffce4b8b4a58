"""Numeric precision of training and extraction: float32 (exact reference) or bfloat16 where it pays."""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "float32", "bfloat16")
# Below this many training captions `auto` trains in float32: bfloat16's kernel speed-up does not outweigh its fixed
# costs there (the 1,400-caption sample trained 74 s in bfloat16, 83 s in float32; Flickr8k's 30,000 captions 2.5x
# faster), and float32 results reproduce byte for byte on other AVX-512 CPUs, where oneDNN's bfloat16 kernels differ.
BFLOAT16_MIN_CAPTIONS = 5000
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_has_native_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo on Linux."""
    try:
        flags = Path(cpuinfo).read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def _gpu_has_native_bfloat16() -> bool | None:
    """True/False for the first visible GPU (compute capability 8.0+ has bfloat16 tensor cores); None without one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
    return tuple(capability) >= (8, 0)


def resolve_precision(setting: str, captions: int | None = None) -> str:
    """`float32` or `bfloat16` for a precision setting; `auto` takes bfloat16 only where the hardware computes it
    natively and, for training on `captions` captions, where there are at least BFLOAT16_MIN_CAPTIONS of them."""
    if setting not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r} (known: {', '.join(PRECISIONS)})")
    if setting != "auto":
        return setting
    if captions is not None and captions < BFLOAT16_MIN_CAPTIONS:
        return "float32"
    gpu = _gpu_has_native_bfloat16()
    native = gpu if gpu is not None else _cpu_has_native_bfloat16()
    return "bfloat16" if native else "float32"


def keras_policy(precision: str) -> str:
    """The Keras dtype policy for a resolved precision: variables stay float32, bfloat16 only computes."""
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"
