"""TorchGenerator: torch's CPU generator (`torch.Generator("cpu").manual_seed(seed)` + `torch.randn`)
re-implemented with numpy, so that a seed gives the same noise as diffusers on the CPU.

Written by hand because the runtime must not depend on torch: only numpy and the standard library
are used here. Everything below imitates PyTorch 2.13's CPU sources (paths in the PyTorch repo):

* aten/src/ATen/core/MT19937RNGEngine.h: a 32-bit Mersenne Twister, seeded like the reference
  `init_genrand(seed & 0xffffffff)` (`init_with_uint32`), so seeds that agree in their low 32 bits
  give the same stream. numpy's `np.random.MT19937` runs the same recurrence; we put our own
  init_genrand key into it (`.state`, position 624 = regenerate first, as torch's `left_ = 1`) and
  read 32-bit words with `random_raw`, vectorised. `torch.Generator.manual_seed` takes any integer
  in [-2**63, 2**64) (a negative one is read as its unsigned 64-bit pattern); so does this class.
* aten/src/ATen/core/DistributionsHelper.h / TransformationHelper.h: `uniform_real_distribution`:
  float = (word & (2**24 - 1)) * 2**-24; double = (random64() & (2**53 - 1)) * 2**-53 with
  random64() = (first word << 32) | second word. `normal_distribution<double>`: Box-Muller on two
  double uniforms u1, u2: r = sqrt(-2 log1p(-u2)), theta = 2 pi u1, returns r cos(theta) and
  caches r sin(theta) in the generator (CPUGeneratorImpl's next_double_normal_sample) for the next
  scalar draw; manual_seed clears the cache, the vectorised path below neither reads nor clears it.
* aten/src/ATen/native/cpu/DistributionTemplates.h, `normal_kernel` / `normal_fill` /
  `NormalFill16` (`normal_fill_16` in older releases):
  - numel < 16 (or non-contiguous): one `normal_distribution<double>` sample per element, in
    order, cast to the dtype (so the cached second sample carries over between calls: a 3-element
    draw leaves one behind for the next small draw).
  - numel >= 16, contiguous (float32): fill the whole buffer with float uniforms first, then
    Box-Muller in place per block of 16: for j < 8, u1 = 1 - data[j], u2 = data[j + 8],
    data[j] = r cos(theta), data[j + 8] = r sin(theta), r = sqrt(-2 log u1), theta = 2 pi u2,
    each stored as fma(x, std=1, mean=+0) (which turns the -0 of u = 0 into +0).
    If numel % 16 != 0 the last 16 outputs are recomputed from 16 freshly drawn uniforms (so the
    tail overlaps the last full block, and 16 more words are consumed).
  - The float math of that block depends on torch's CPU capability
    (`torch.backends.cpu.get_cpu_capability()`), hence `kernel=`:
    "avx2" (the default; what x86-64 torch runs when the capability is AVX2 *or* AVX512, checked:
    both give identical bits): `NormalFill16<float>`'s AVX2 specialisation (`normal_fill_16_AVX2`
    in older releases) with `log256_ps` / `sincos256_ps` from aten/src/ATen/native/cpu/
    avx_mathfun.h (Cephes float polynomials, not libm and not Sleef). torch's wheels are built by
    GCC, which contracts the intrinsics' multiply + add pairs into FMAs (-ffp-contract=fast), so
    we evaluate the same polynomials in float32 with the same FMAs (found empirically: each
    alternative contraction changes thousands of values per 4M). numpy has no fma, so `_fma32`
    does it exactly: the float32 product is exact in float64, the one float64 rounding of the sum
    is then rounded to float32, and the rare double-rounding case (the float64 sum lands exactly
    on a float32 halfway point) is corrected with the TwoSum error term. Result: bit-exact.
    Checked: log/sin/cos here equal GCC-compiled avx_mathfun.h (-O2 -mavx2 -mfma) on all 2**24
    inputs Box-Muller can give them, and randn equals torch 2.13 on 67M values (16 seeds).
    "default" (torch's DEFAULT capability: CPUs without AVX2 and non-x86 machines such as
    aarch64/Apple silicon): the scalar `NormalFill16` calls the C library's float logf/cosf/
    sinf, which differ between C libraries and are not correctly rounded (glibc 2.36 differs
    from the correctly rounded value on 0.7% of the 2**24 possible logf inputs here and 1.3% of
    the sinf/cosf ones). We use correctly rounded values (float64 numpy, rounded to float32)
    instead, so that kernel is approximate: measured against torch 2.13 with
    ATEN_CPU_CAPABILITY=default on glibc 2.36, ~98.5% of values are bit-equal and the rest
    differ by at most 3 ulp (tests/test_generator.py checks <= 4 ulp, >= 97% equal).
* The scalar (numel < 16) path uses Python's `math.log1p/sin/cos/sqrt`, which call the same C
  library functions as torch's `::log1p/::sin/::cos/::sqrt`, in double: bit-exact where Python and
  torch share the C library (any normal Linux install); elsewhere a last-bit difference in double
  very rarely survives the cast to float32.

dtype float16 is torch's reduced-precision path (opmath float32, same math, rounded to half),
with one difference in the stream: it draws 16 uniforms per block and does not draw the
numel % 16 leftover uniforms that the float32 path fills and then overwrites, so after a
float16 draw whose numel is not a multiple of 16 the stream position differs from float32's.
For numel < 16 the double sample is cast to half through float, like c10::Half's constructor.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import numpy as np

__all__ = ["TorchGenerator", "DEFAULT_SEED", "KERNELS"]

DEFAULT_SEED = 67280421310721  # torch.Generator().initial_seed() when never seeded
KERNELS = ("avx2", "default")
_KERNEL_ALIASES = {"avx2": "avx2", "avx512": "avx2", "default": "default"}

_F32 = np.float32
_F64 = np.float64
_MT_N = 624


def _init_genrand_key(seed32: int) -> np.ndarray:
    """MT19937 state after init_genrand(seed32) (MT19937RNGEngine.h `init_with_uint32`)."""
    key = [0] * _MT_N
    s = key[0] = seed32
    for j in range(1, _MT_N):
        s = key[j] = (1812433253 * (s ^ (s >> 30)) + j) & 0xFFFFFFFF
    return np.array(key, dtype=np.uint32)


# ---------------------------------------------------------------------------------------------
# float32 arithmetic as torch's compiled AVX2 kernel does it
# ---------------------------------------------------------------------------------------------

_MID_MASK = np.uint64((1 << 29) - 1)  # float64 fraction bits below float32's 23
_MID = np.uint64(1 << 28)  # ... equal to a float32 halfway point


def _fma32(a, b, c) -> np.ndarray:
    """Single-rounding float32 a * b + c (an FMA instruction), elementwise."""
    p = np.multiply(a, b, dtype=_F64)  # exact: 24 + 24 bits fit in 53
    c = np.asarray(c, _F64)
    s = np.atleast_1d(p + c)
    mid = (s.view(np.uint64) & _MID_MASK) == _MID
    if mid.any():  # s sits on a float32 tie: round it off the tie in the direction of the error
        ps, cs, ss = (np.broadcast_to(v, s.shape)[mid] for v in (p, c, s))
        bb = ss - ps
        err = (ps - (ss - bb)) + (cs - bb)  # TwoSum: exact p + c - s
        s[mid] = np.where(err == 0, ss, np.nextafter(ss, np.where(err > 0, np.inf, -np.inf)))
    return s.astype(_F32).reshape(np.broadcast(p, c).shape)


# avx_mathfun.h constants (as float32, like _PS256_CONST)
_SQRTHF = _F32(0.707106781186547524)
_LOG_P = [_F32(v) for v in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                            1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                            3.3333331174e-1)]
_LOG_Q1 = _F32(-2.12194440e-4)
_LOG_Q2 = _F32(0.693359375)
_DP = [_F32(v) for v in (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8)]
_SINCOF = [_F32(v) for v in (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)]
_COSCOF = [_F32(v) for v in (2.443315711809948e-005, -1.388731625493765e-003, 4.166664568298827e-002)]
_FOPI = _F32(1.27323954473516)
_HALF = _F32(0.5)
_ONE = _F32(1.0)
_TWO_PI_F32 = _F32(2.0 * math.pi)  # _mm256_set1_ps(2.0f * c10::pi<double>)


def _log256_ps(x: np.ndarray) -> np.ndarray:
    """avx_mathfun.h log256_ps for positive normal float32 x, with GCC's FMA contractions."""
    bits = x.view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(_F32) + _ONE
    x = ((bits & ~0x7F800000) | _HALF.view(np.int32)).view(_F32)  # mantissa in [0.5, 1)
    small = x < _SQRTHF
    tmp = np.where(small, x, _F32(0))
    x = x - _ONE
    e = e - small.astype(_F32)
    x = x + tmp
    z = x * x
    y = _fma32(_LOG_P[0], x, _LOG_P[1])
    for p in _LOG_P[2:]:
        y = _fma32(y, x, p)
    y = y * x
    y = _fma32(y, z, e * _LOG_Q1)  # y*z + e*q1: GCC fuses the y*z product
    y = _fma32(-z, _HALF, y)  # y - z*0.5
    x = x + y
    return _fma32(e, _LOG_Q2, x)  # x + e*q2


def _sincos256_ps(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """avx_mathfun.h sincos256_ps for float32 x >= 0 (as Box-Muller's theta), GCC's FMAs."""
    j = (x * _FOPI).astype(np.int32)  # cvttps: truncation
    j = (j + 1) & ~1
    y = j.astype(_F32)
    sin_negative = (j & 4) != 0
    use_sin_poly = (j & 2) == 0
    cos_negative = (~(j - 2) & 4) != 0
    x = _fma32(y, _DP[0], x)  # extended precision modular arithmetic, x - y*pi/4
    x = _fma32(y, _DP[1], x)
    x = _fma32(y, _DP[2], x)
    z = x * x
    c = _fma32(_COSCOF[0], z, _COSCOF[1])
    c = _fma32(c, z, _COSCOF[2])
    c = c * z
    c = _fma32(c, z, -(z * _HALF))  # c*z - z*0.5: GCC fuses c*z
    c = c + _ONE
    s = _fma32(_SINCOF[0], z, _SINCOF[1])
    s = _fma32(s, z, _SINCOF[2])
    s = s * z
    s = _fma32(s, x, x)
    sin = np.where(use_sin_poly, s, c)
    cos = np.where(use_sin_poly, c, s)
    return np.where(sin_negative, -sin, sin), np.where(cos_negative, -cos, cos)


def _box_muller_avx2(u: np.ndarray) -> np.ndarray:
    """NormalFill16<float> AVX2 specialisation over rows of 16 float32 uniforms."""
    u1 = _ONE - u[:, :8]
    radius = np.sqrt(_F32(-2.0) * _log256_ps(u1))
    sin, cos = _sincos256_ps(_TWO_PI_F32 * u[:, 8:])
    # + 0: the kernel stores fmadd(n, std=1, mean=+0), which turns a -0 (u = 0 gives radius -0) into +0
    return np.concatenate([radius * cos, radius * sin], axis=1) + _F32(0)


def _box_muller_default(u: np.ndarray) -> np.ndarray:
    """Scalar NormalFill16<float>, with correctly rounded log/cos/sin standing in for libm's."""
    u1 = _ONE - u[:, :8]
    radius = np.sqrt(_F32(-2.0) * np.log(u1.astype(_F64)).astype(_F32))
    theta = (2.0 * math.pi * u[:, 8:].astype(_F64)).astype(_F32).astype(_F64)  # float theta
    out = np.concatenate([radius * np.cos(theta).astype(_F32), radius * np.sin(theta).astype(_F32)], axis=1)
    return out + _F32(0)  # std::fma(n, std=1, mean=+0)


_BOX_MULLER = {"avx2": _box_muller_avx2, "default": _box_muller_default}


class TorchGenerator:
    """numpy stand-in for `torch.Generator("cpu")`: same seed, same `randn` values and stream.

    >>> g = TorchGenerator(42)      # torch.Generator("cpu").manual_seed(42)
    >>> x = g.randn((1, 4, 64, 64))  # torch.randn((1, 4, 64, 64), generator=g).numpy()

    `kernel` picks which torch CPU build to match: "avx2" (x86-64 with AVX2 or AVX512, exact) or
    "default" (torch's DEFAULT capability, approximate); see the module docstring.
    """

    def __init__(self, seed: int = DEFAULT_SEED, kernel: str = "avx2"):
        try:
            self.kernel = _KERNEL_ALIASES[str(kernel).lower()]
        except KeyError:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}") from None
        self._box_muller = _BOX_MULLER[self.kernel]
        self._bitgen = np.random.MT19937(0)  # state replaced by manual_seed
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "TorchGenerator":
        """Reseed (and drop the cached normal sample), like torch.Generator.manual_seed."""
        seed = operator.index(seed)
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
        self._seed = seed & 0xFFFFFFFFFFFFFFFF
        self._bitgen.state = {"bit_generator": "MT19937",
                              "state": {"key": _init_genrand_key(self._seed & 0xFFFFFFFF), "pos": _MT_N}}
        self._next_double_normal: float | None = None
        return self

    def initial_seed(self) -> int:
        """The seed as torch reports it (unsigned 64-bit)."""
        return self._seed

    def get_state(self) -> dict:
        """An opaque copy of the generator state (MT state and the cached normal sample)."""
        return {"mt19937": self._bitgen.state, "next_double_normal": self._next_double_normal,
                "seed": self._seed}

    def set_state(self, state: dict) -> "TorchGenerator":
        """Restore what `get_state` returned."""
        self._bitgen.state = state["mt19937"]
        self._next_double_normal = state["next_double_normal"]
        self._seed = state["seed"]
        return self

    def _words(self, n: int) -> np.ndarray:
        return self._bitgen.random_raw(n).astype(np.uint32)

    def _uniform_float(self, n: int) -> np.ndarray:
        return (self._words(n) & np.uint32(0xFFFFFF)).astype(_F32) * _F32(2.0**-24)

    def _normal_double(self) -> float:
        """One at::normal_distribution<double>(0, 1) sample (with the cached second value)."""
        if self._next_double_normal is not None:
            value, self._next_double_normal = self._next_double_normal, None
            return value
        w = [int(v) for v in self._words(4)]
        u1 = (((w[0] << 32) | w[1]) & ((1 << 53) - 1)) * 2.0**-53
        u2 = (((w[2] << 32) | w[3]) & ((1 << 53) - 1)) * 2.0**-53
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_double_normal = r * math.sin(theta)
        return r * math.cos(theta)  # the caller adds mean=+0 (transformation::normal: x*std + mean)

    def randn(self, shape: int | Iterable[int], dtype=np.float32) -> np.ndarray:
        """`torch.randn(shape, generator=self, dtype=...)` as a C-contiguous numpy array;
        successive calls continue the stream exactly as torch's do. dtype: float32 or float16."""
        shape = (operator.index(shape),) if not isinstance(shape, Iterable) else tuple(operator.index(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise TypeError(f"randn supports float32 and float16, got {dtype}")
        n = math.prod(shape)
        if n < 16:
            out = (np.array([self._normal_double() for _ in range(n)], dtype=_F64) + 0.0).astype(_F32)
        else:
            out = np.empty(n, _F32)
            full = n // 16 * 16
            # float32 fills all n uniforms before transforming; the reduced-precision path
            # (float16) transforms 16 at a time and never draws the n - full leftover ones
            drawn = self._uniform_float(n if dtype == np.float32 else full)
            out[:full] = self._box_muller(drawn[:full].reshape(-1, 16)).ravel()
            if n % 16:  # torch redraws 16 uniforms and recomputes the last 16 outputs
                out[n - 16:] = self._box_muller(self._uniform_float(16).reshape(1, 16)).ravel()
        return out.astype(dtype, copy=False).reshape(shape)
