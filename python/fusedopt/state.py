"""Low-precision optimizer state: the formats' arithmetic in NumPy.

The fused kernels store optimizer slots in one of three formats
(``state_dtype`` of the optimizer classes, ``state_format`` of the ops; the
C++ side is cc/rules/state_format.h, Note [low-precision state]):

- ``"float32"`` (the ops' ``"same"``): the variable's dtype, Keras' numbers.
- ``"bfloat16"``: bfloat16, computed in float32 and stored with stochastic
  rounding (unbiased: the expected stored value is the exact one).
- ``"int8"``: one byte per element, in blocks of at most 256 elements along a
  row of the variable's first dimension (a rank-0 or rank-1 variable is one
  row), with one float32 absmax per block. A code is a small floating-point
  number relative to the block's absmax: signed slots (momenta) use 1 sign, 4
  exponent and 3 fraction bits (relative values down to 2**-17), non-negative
  slots (second moments, accumulators) 5 exponent and 3 fraction bits (down to
  2**-33). Values are rounded to the nearest code; a block's largest value is
  stored exactly.

This module is the same arithmetic in NumPy, bit for bit: tests check the
kernels against it, and the optimizers use it to convert float32 state
(``from_keras``, float32 checkpoints) into int8. It imports no TensorFlow.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK", "MIN_QUANTIZED_ELEMENTS", "STATE_DTYPES", "layout", "num_blocks",
    "encode", "decode", "quantize", "dequantize", "rounding_hash", "rounding_bits",
    "stochastic_bfloat16",
    "bytes_per_element",
]

BLOCK = 256  # elements per quantization block (at most: a block never crosses a row)
# Variables with fewer elements keep float32 state under state_dtype="int8"
# (their absmax would cost more than the codes save, and small tensors such as
# biases and norms are the most sensitive).
MIN_QUANTIZED_ELEMENTS = 4096
STATE_DTYPES = ("float32", "bfloat16", "int8")

_SIGNED_NAN = 0x7F
_UNSIGNED_NAN = 0xFF


def layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row_size) of a variable's quantization blocks: rows of the first
    dimension for rank >= 2, one row otherwise."""
    shape = tuple(int(d) for d in shape)
    elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(shape) >= 2 and shape[0] > 0:
        return shape[0], elements // shape[0]
    return 1, elements


def num_blocks(shape: tuple[int, ...]) -> int:
    """The number of absmax entries of an int8 slot of a variable of ``shape``."""
    rows, row_size = layout(shape)
    return rows * (-(-row_size // BLOCK))


def _f32_bits(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x).view(np.uint32).reshape(x.shape)


def _bits_f32(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.uint32)
    return np.ascontiguousarray(u).view(np.float32).reshape(u.shape)


def encode(y: np.ndarray, *, signed: bool) -> np.ndarray:
    """The uint8 codes of values ``y`` relative to their block's absmax
    (|y| <= 1; larger magnitudes are clamped to 1, negative values to 0 in
    the unsigned code), rounded to nearest, ties to even."""
    y = np.asarray(y, dtype=np.float32)
    u = _f32_bits(y)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    a = u & np.uint32(0x7FFFFFFF)
    if not signed:
        a = np.where((u >> 31) != 0, np.uint32(0), a)
    a = np.minimum(a, np.uint32(0x3F800000))
    sub_add = np.float32(64.0 if signed else 2.0 ** -10)
    smallest_normal = np.uint32(0x38800000 if signed else 0x30800000)
    with np.errstate(over="ignore"):
        sub = _f32_bits(_bits_f32(a) + sub_add) - _f32_bits(np.asarray(sub_add))
        rebias = np.uint32((112 if signed else 96) << 3)
        normal = ((a + np.uint32(0x7FFFF) + ((a >> 20) & 1)) >> 20) - rebias
    m = np.where(a < smallest_normal, sub, normal)
    if signed:
        code = ((u >> 24) & 0x80) | m
        code = np.where(nan, _SIGNED_NAN, code)
    else:
        code = np.where(nan, _UNSIGNED_NAN, m)
    return code.astype(np.uint8)


def decode(codes: np.ndarray, *, signed: bool) -> np.ndarray:
    """The float32 values of codes (relative to the block's absmax)."""
    b = np.asarray(codes, dtype=np.uint8).astype(np.uint32)
    m = (b & 0x7F) if signed else b
    sign = ((b & 0x80) << 24) if signed else np.zeros_like(b)
    rebias = (112 if signed else 96) << 3
    unit = np.float32(2.0 ** -17 if signed else 2.0 ** -33)
    normal = (m + rebias) << 20
    sub = _f32_bits(m.astype(np.float32) * unit)
    nan_code = _SIGNED_NAN if signed else _UNSIGNED_NAN
    mag = np.where(m == nan_code, np.uint32(0x7FC00000), np.where(m >= 8, normal, sub))
    return _bits_f32((sign | mag).astype(np.uint32))


def _blocks(x: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of every block of a variable, in absmax order, over its
    flattened elements."""
    rows, row_size = layout(x.shape)
    spans = []
    for r in range(rows):
        for c in range(0, row_size, BLOCK):
            spans.append((r * row_size + c, r * row_size + min(c + BLOCK, row_size)))
    return spans


def quantize(x: np.ndarray, *, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(codes of x's shape, float32 absmax per block) of float32 values,
    as the kernels store a slot."""
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    codes = np.zeros(flat.shape, np.uint8)
    spans = _blocks(x)
    absmax = np.zeros(len(spans), np.float32)
    for j, (s, e) in enumerate(spans):
        block = flat[s:e]
        mag = _f32_bits(np.abs(block))
        amax = np.float32(_bits_f32(np.asarray(mag.max() if mag.size else 0, np.uint32)))
        inv = np.float32(1.0) / amax if amax > 0 else np.float32(0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            codes[s:e] = encode(block * inv, signed=signed)
        absmax[j] = amax
    return codes.reshape(x.shape), absmax


def dequantize(codes: np.ndarray, absmax: np.ndarray, *, signed: bool) -> np.ndarray:
    """The float32 values of a quantized slot (decode(code) * absmax, in float32)."""
    codes = np.asarray(codes, np.uint8)
    flat = decode(codes.reshape(-1), signed=signed)
    out = np.empty(flat.shape, np.float32)
    for j, (s, e) in enumerate(_blocks(codes)):
        with np.errstate(invalid="ignore", over="ignore"):
            out[s:e] = flat[s:e] * np.float32(absmax[j])
    return out.reshape(codes.shape)


# ---- Rounding bits (stochastic rounding) ----------------------------------------

_M32 = np.uint64(0xFFFFFFFF)


def _mix32(x):
    x = np.asarray(x, dtype=np.uint64) & _M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & _M32
    x ^= x >> np.uint64(16)
    return x


def _key(seed: int, tensor: int, stream: int, hi: int) -> np.uint64:
    seed &= 0xFFFFFFFFFFFFFFFF
    k = _mix32((seed >> 32) ^ 0x9E3779B9)
    k = _mix32(k ^ np.uint64(seed & 0xFFFFFFFF))
    k = _mix32(k ^ np.uint64(((tensor * 0x85EBCA6B) + stream) & 0xFFFFFFFF))
    return _mix32((k + np.uint64(hi)) & _M32)


STREAM_A, STREAM_B = 0, 1


def rounding_hash(seed: int, tensor: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Hash ``stream`` (STREAM_A, STREAM_B) of elements ``index`` of the tensor
    at position ``tensor`` of a call: 32 bits each."""
    index = np.asarray(index, dtype=np.int64)
    out = np.empty(index.shape, np.uint32)
    hi = (index >> 32).astype(np.uint64)
    for h in np.unique(hi):
        sel = hi == h
        key = _key(int(seed), int(tensor), int(stream), int(h))
        out[sel] = _mix32((index[sel].astype(np.uint64) & _M32) ^ key).astype(np.uint32)
    return out


def rounding_bits(seed: int, tensor: int, index: np.ndarray, *, slot: int | None = None
                  ) -> np.ndarray:
    """The 16 rounding bits (in the low half) of slot ``slot`` of elements
    ``index`` (slot None: the variable's): hash A's low and high halves for
    slots 0 and 1, hash B's low half for slot 2 and its high half for the
    variable."""
    if slot in (0, 1):
        a = rounding_hash(seed, tensor, STREAM_A, index)
        return a & 0xFFFF if slot == 0 else a >> 16
    b = rounding_hash(seed, tensor, STREAM_B, index)
    return b & 0xFFFF if slot == 2 else b >> 16


def stochastic_bfloat16(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """float32 x rounded to bfloat16 stochastically with random ``bits``
    (returned as the bfloat16 values in float32)."""
    u = _f32_bits(np.asarray(x, np.float32)).astype(np.uint64)
    special = (u & 0x7F800000) == 0x7F800000
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + (np.asarray(bits, np.uint64) & np.uint64(0xFFFF))) >> np.uint64(16)
    kept = np.where(is_nan, (u >> np.uint64(16)) | np.uint64(0x40), u >> np.uint64(16))
    top = np.where(special, kept, rounded).astype(np.uint32) << 16
    return _bits_f32(top)


def bytes_per_element(state_dtype: str, num_slots: int, shape: tuple[int, ...] = (1 << 24,),
                      variable_bytes: int = 4) -> float:
    """Optimizer state bytes per parameter of a variable of ``shape`` with
    ``num_slots`` slots in ``state_dtype`` (int8: codes plus absmax)."""
    elements = int(np.prod(shape, dtype=np.int64))
    if state_dtype == "int8" and elements >= MIN_QUANTIZED_ELEMENTS:
        return num_slots * (1 + 4 * num_blocks(shape) / elements)
    if state_dtype == "bfloat16":
        return num_slots * 2.0
    return num_slots * float(variable_bytes if state_dtype != "int8" else 4)
