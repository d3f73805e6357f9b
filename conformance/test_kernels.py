"""Kernel-level conformance: every kernel of every backend vs reference.layers in float64, on random shapes.

Property tests (hypothesis, fixed seeds): shapes include B*T not a multiple of 8 (llm.c's matmul
unrolls by 8), C not a multiple of 16, T = 1, NH = 1 and V < Vp; gradient outputs are pre-filled, so
a kernel must accumulate with +=. The checks themselves live in conformance/kernel_checks.py.
"""

from hypothesis import example, given, settings
from hypothesis import strategies as st
import pytest

from conformance.kernel_checks import EXAMPLE_SHAPES, SHAPE_RANGES, make_shape, run_kernel_check
from reference.layers import KERNEL_NAMES

EXAMPLES_PER_KERNEL = 12


kernel_shapes = st.builds(
    make_shape, bias=st.booleans(), **{k: st.integers(lo, hi) for k, (lo, hi) in SHAPE_RANGES.items()}
)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel(backend, recorder, name):
    reason = backend.missing_kernel_reason(name)
    if reason:
        pytest.skip(reason)

    @settings(max_examples=EXAMPLES_PER_KERNEL)
    @given(shape=kernel_shapes, seed=st.integers(0, 2**32 - 1))
    @example(shape=EXAMPLE_SHAPES[0], seed=0)
    @example(shape=EXAMPLE_SHAPES[1], seed=1)
    @example(shape=EXAMPLE_SHAPES[2], seed=2)
    def check(shape, seed):
        results = [recorder.add(r) for r in run_kernel_check(backend, name, shape, seed)]
        failed = [r.message() for r in results if not r.passed]
        assert not failed, f"{name} on {shape}, seed {seed}:\n" + "\n".join(failed)

    check()
