"""CCI masks, kernel selection, schedules and the packed format."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cci

SETTINGS = hypothesis.settings(deadline=None, max_examples=30)
# Jitted once per shape: far cheaper than eager op-by-op dispatch of many shapes.
mask_fn = jax.jit(cci.cci_mask, static_argnums=(1, 2, 3))
unpack_fn = jax.jit(cci.unpack, static_argnums=(2, 3))


@st.composite
def kernels(draw):
  """A random conv or dense kernel with a valid (group_size, keep, granularity)."""
  group_size = draw(st.sampled_from([2, 4, 8, 16]))
  keep = draw(st.integers(1, group_size - 1))
  groups = draw(st.sampled_from([1, 3]))
  c_out = draw(st.sampled_from([1, 5]))
  conv = draw(st.booleans())
  shape = ((draw(st.sampled_from([1, 3])), 3) if conv else ()) + (
      groups * group_size, c_out)
  # Few distinct values make ties common.
  values = draw(st.sampled_from(['normal', 'ties']))
  key = jax.random.key(draw(st.integers(0, 2**16)))
  kernel = jax.random.normal(key, shape)
  if values == 'ties':
    kernel = jnp.round(kernel)
  granularity = draw(st.sampled_from(cci.GRANULARITIES))
  return kernel, group_size, keep, granularity


def grouped(x, group_size):
  x = np.asarray(x)
  return x.reshape(*x.shape[:-2], x.shape[-2] // group_size, group_size, x.shape[-1])


@hypothesis.given(kernels())
@SETTINGS
def test_exactly_keep_per_group_and_the_largest_kept(case):
  kernel, g, k, granularity = case
  mask = mask_fn(kernel, g, k, granularity)
  assert mask.shape == kernel.shape and mask.dtype == jnp.bool_
  assert np.all(np.asarray(cci.kept_per_group(mask, g)) == k)
  score = grouped(cci.masks.scores(kernel, granularity), g)
  m = grouped(mask, g)
  kept_min = np.where(m, score, np.inf).min(-2)
  pruned_max = np.where(~m, score, -np.inf).max(-2)
  assert np.all(kept_min >= pruned_max)


@hypothesis.given(kernels())
@hypothesis.settings(deadline=None, max_examples=10)
def test_idempotent_and_jit_equals_no_jit(case):
  kernel, g, k, granularity = case
  mask = mask_fn(kernel, g, k, granularity)
  np.testing.assert_array_equal(cci.cci_mask(kernel, g, k, granularity), mask)
  # Masking again keeps the same entries unless kept entries were themselves zero.
  if np.all(np.asarray(cci.masks.scores(kernel, granularity))[np.asarray(mask)] > 0):
    np.testing.assert_array_equal(mask_fn(kernel * mask, g, k, granularity), mask)


@hypothesis.given(kernels())
@hypothesis.settings(deadline=None, max_examples=15)  # Each shape compiles anew.
def test_pack_unpack_round_trip(case):
  kernel, g, k, granularity = case
  mask = mask_fn(kernel, g, k, granularity)
  values, indices = cci.pack(kernel, mask, g)
  assert values.shape == (*kernel.shape[:-2], kernel.shape[-2] * k // g, kernel.shape[-1])
  assert indices.dtype == jnp.uint8 and int(indices.max()) < g
  np.testing.assert_array_equal(unpack_fn(values, indices, g, k), kernel * mask)


def test_hand_computed_masks_and_ties_to_the_lower_index():
  kernel = jnp.array([0.1, -0.5, 0.3, 0.2, 1.0, 1.0, 1.0, 1.0])[:, None]
  np.testing.assert_array_equal(
      cci.cci_mask(kernel, 4, 2)[:, 0], [False, True, True, False, True, True, False, False])
  # Kernel granularity: the L2 norm of each 2x1 slice decides (0.5 vs 0.4, 0.6, 0.1).
  kernel = jnp.array([[0.3, 0.0, 0.6, 0.1], [0.4, 0.4, 0.0, 0.0]]).reshape(2, 1, 4, 1)
  mask = cci.cci_mask(kernel, 4, 2, 'kernel')
  np.testing.assert_array_equal(mask[:, 0, :, 0], [[True, False, True, False]] * 2)


@pytest.mark.parametrize('shape, g, k, message', [
    ((3, 3, 12, 4), 8, 2, r'c_in=12 .*group_size=8'),
    ((16, 4), 8, 8, r'keep=8 .*group_size=8'),
    ((16, 4), 8, 0, r'keep=0 .*group_size=8'),
])
def test_impossible_settings_name_both_values(shape, g, k, message):
  with pytest.raises(ValueError, match=message):
    cci.cci_mask(jnp.ones(shape), g, k)


def test_kernel_selection_reports_every_kernel_and_why():
  params = {'stem': {'kernel': jnp.ones((3, 3, 3, 16))},
            'conv': {'kernel': jnp.ones((3, 3, 16, 16)), 'bias': jnp.ones(16)},
            'dw': {'kernel': jnp.ones((3, 3, 1, 16))},
            'head': {'kernel': jnp.ones((16, 10))}}
  decisions = {d.path: d for d in cci.select_kernels(params, 8, 2, exclude='head')}
  assert decisions['conv/kernel'].grouped
  assert not decisions['stem/kernel'].grouped and 'c_in=3' in decisions['stem/kernel'].reason
  assert 'depth-wise' in decisions['dw/kernel'].reason
  assert 'excluded' in decisions['head/kernel'].reason
  assert not decisions['conv/bias'].grouped
  assert 'stem/kernel' in cci.decisions_table(list(decisions.values()))
  with pytest.raises(ValueError, match='stem/kernel'):  # Included but impossible.
    cci.select_kernels(params, 8, 2, include='stem|conv')


@hypothesis.given(g=st.sampled_from([4, 8, 16]), data=st.data(),
                  begin=st.integers(0, 50), length=st.integers(1, 200))
@SETTINGS
def test_kept_count_schedule_is_monotone_and_ends_at_keep(g, data, begin, length):
  k = data.draw(st.integers(1, g - 1))
  counts = np.asarray(cci.kept_count(jnp.arange(300), g, k, begin, begin + length))
  assert counts[0] == g and counts[begin] == g
  assert np.all(np.diff(counts) <= 0)
  assert np.all(counts[begin + length:] == k)


def test_cubic_density_hand_computed():
  # Half-way: d = 0.25 + 0.75 * 0.5**3 = 0.34375; 8 * d = 2.75 -> 3 kept.
  assert float(cci.cubic_density(50, 0, 100, 0.25)) == pytest.approx(0.34375)
  assert int(cci.kept_count(50, 8, 2, 0, 100)) == 3


# ------------------------------------------------ unstructured baseline (Zhu & Gupta)


def test_magnitude_mask_hand_computed_with_ties_to_lower_index():
  kernel = jnp.array([[0.5, -3.0], [1.0, -1.0]])
  np.testing.assert_array_equal(cci.magnitude_mask(kernel, 0.5),
                                [[False, True], [True, False]])
  np.testing.assert_array_equal(cci.magnitude_mask(kernel, 0.0), np.zeros((2, 2), bool))


magnitude_fn = jax.jit(cci.magnitude_mask)


@SETTINGS
@hypothesis.given(
    # XLA on CPU flushes subnormals to zero, so they tie with 0 there.
    st.lists(st.floats(-4, 4, width=32, allow_subnormal=False), min_size=192, max_size=192),
    st.floats(0.0, 1.0))
def test_magnitude_mask_keeps_the_largest_at_density(values, density):
  kernel = np.asarray(values, np.float32).reshape(3, 2, 8, 4)
  mask = np.asarray(magnitude_fn(jnp.asarray(kernel), density))
  assert mask.sum() == round(density * kernel.size)
  if 0 < mask.sum() < mask.size:
    assert np.abs(kernel[mask]).min() >= np.abs(kernel[~mask]).max()
