"""The integer-operation float16 conversions equal numpy's casts bit for bit (round to nearest even)."""

import numpy as np
import pytest

from edm2lib.phema import half


def _all_halves() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def _to_float16(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.empty(x.shape, np.float16) if out is None else out
    work = (*(np.empty(x.shape, np.int32) for _ in range(3)), np.empty(x.shape, bool))
    half.to_float16(np.ascontiguousarray(x, np.float32), out, work)
    return out


def test_every_finite_half_widens_exactly():
    h = _all_halves()
    h = h[np.isfinite(h)]  # 63,490 values: zeros, subnormals, normals, both signs
    got = half.to_float32(h, np.empty(h.shape, np.int32))
    assert np.array_equal(got.view(np.int32), h.astype(np.float32).view(np.int32))


def test_widening_a_strided_view_reads_only_its_elements():
    h = np.arange(24, dtype=np.float16).reshape(4, 6) / 7
    got = half.to_float32(h[:, 1:5], np.empty((4, 4), np.int32))
    assert np.array_equal(got, h[:, 1:5].astype(np.float32))


def test_narrowing_rounds_to_nearest_even_like_numpy():
    h = _all_halves()
    h = h[np.isfinite(h)].astype(np.float32)
    order = np.argsort(h, kind="stable")
    s = h[order]
    midpoints = ((s[:-1].astype(np.float64) + s[1:]) / 2).astype(np.float32)  # exact ties
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate(
        [
            h,
            midpoints,
            np.nextafter(midpoints, np.float32(np.inf)),
            np.nextafter(midpoints, np.float32(-np.inf)),
            bits[np.isfinite(bits)],  # every binade, far beyond the half's range included
            np.float32([65504, 65519.996, 65520, 1e38, -1e38, 6.1e-5, 5.96e-8, 2.98e-8, 0.0, -0.0]),
        ]
    )
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = _to_float16(x)
    wrong = np.flatnonzero(got.view(np.uint16) != want.view(np.uint16))
    assert wrong.size == 0, f"{wrong.size} values differ, e.g. {x[wrong[:3]]} -> {got[wrong[:3]]}"


def test_narrowing_writes_into_a_strided_output():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    out = np.zeros((3, 10), np.float16)
    _to_float16(x, out[:, 2:6])
    assert np.array_equal(out[:, 2:6], x.astype(np.float16))
    assert not out[:, :2].any() and not out[:, 6:].any()


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_finds_an_infinity_or_nan(bad):
    h = np.linspace(-65504, 65504, 1000).astype(np.float16)
    work = np.empty(h.shape, np.uint16)
    assert not half.nonfinite(h, work)
    h[517] = bad
    assert half.nonfinite(h, work)


def test_every_bfloat16_bit_pattern_widens_like_torch():
    import torch

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    spaced = np.zeros(2 * bits.size, np.uint16)
    spaced[::2] = bits
    got = half.bfloat16_to_float32(spaced[::2], np.empty(bits.shape, np.int32))  # a strided view
    want = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    finite = np.isfinite(want)
    assert np.array_equal(got.view(np.int32)[finite], want.view(np.int32)[finite])
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(
        got[np.isinf(got)], want[np.isinf(want)]
    )


def test_nonfinite_reads_bfloat16_exponents():
    bits = (
        np.float32([1.0, -3.5, 2.0**121, -1e-30]).view(np.uint32) >> 16
    )  # bf16 = the upper half of a float32
    bits = bits.astype(np.uint16)
    work = np.empty(bits.shape, np.uint16)
    assert not half.nonfinite(bits, work, half.EXPONENT_BITS["BF16"])
    assert half.nonfinite(
        bits, work
    )  # read as float16 bits, 2^121's pattern is an infinity: the mask matters
    bits[2] = 0x7F80  # +inf
    assert half.nonfinite(bits, work, half.EXPONENT_BITS["BF16"])
