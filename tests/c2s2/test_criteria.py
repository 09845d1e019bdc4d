"""Channel-importance criteria of the L1-filter and network-slimming baselines."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from c2s2 import criteria
from c2s2.graph import ChannelGroup
from train import channel_baselines


def group(producers=('conv',), sites=('bn',), size=3):
  return ChannelGroup(name=producers[0], size=size, producers=producers, sites=sites,
                      couplings=(), joined=len(producers) > 1, prunable=True, reason='')


def test_filter_l1_norms_hand_computed_and_summed_over_producers():
  kernel = np.zeros((1, 1, 2, 3))
  kernel[0, 0, :, 0] = [1.0, -2.0]
  kernel[0, 0, :, 2] = [0.5, 0.0]
  params = {'a': {'kernel': kernel}, 'b': {'kernel': -kernel}}
  np.testing.assert_allclose(criteria.filter_l1_norms(params, group(('a',))), [3, 0, 0.5])
  np.testing.assert_allclose(criteria.filter_l1_norms(params, group(('a', 'b'))), [6, 0, 1])


def test_filter_l1_norms_per_unit_of_tied_channels_hand_computed():
  heads = ChannelGroup(name='qkv', size=2, producers=('qkv', 'mha'), sites=(),
                       couplings=(), joined=True, prunable=True, reason='', unit=2)
  fused = np.array([[1.0, -1.0, 2.0, 0.0, 0.5, 0.5, 0.0, 3.0]])  # (in, Q|K of 2 heads)
  projection = np.array([[[1.0, 2.0], [0.0, -4.0]]])  # DenseGeneral (in, heads, dim)
  np.testing.assert_allclose(criteria.filter_l1_norms(
      {'qkv': {'kernel': fused}, 'mha': {'kernel': projection}}, heads), [6.0, 9.0])
  positions = ChannelGroup(name='conv', size=2, producers=('conv',), sites=('bn',),
                           couplings=(), joined=False, prunable=True, reason='')
  kernel = np.array([[[[1.0, 2.0, 3.0, -4.0]]]])  # 2 conv groups of 2 positions
  np.testing.assert_allclose(criteria.filter_l1_norms({'conv': {'kernel': kernel}},
                                                      positions), [4.0, 6.0])
  params = {'bn': {'scale': np.array([1.0, -2.0, 3.0, 4.0])}}
  np.testing.assert_allclose(criteria.norm_scales(params, positions), [4.0, 6.0])


def test_norm_scales_and_missing_norm_named():
  params = {'bn': {'scale': np.array([0.5, -2.0, 0.0]), 'bias': np.zeros(3)},
            'conv': {'kernel': np.ones((1, 1, 2, 3))}}
  np.testing.assert_allclose(criteria.norm_scales(params, group()), [0.5, 2.0, 0.0])
  with pytest.raises(ValueError, match='has none at conv'):
    criteria.norm_scales(params, group(sites=('conv',)))


def test_uniform_masks_hand_computed():
  importance = {'a': np.array([3.0, 1.0, 2.0, 1.0]), 'b': np.array([1.0, 5.0])}
  masks = criteria.uniform_masks(importance, 0.5, min_channels=2)
  np.testing.assert_array_equal(masks['a'], [True, False, True, False])
  np.testing.assert_array_equal(masks['b'], [True, True])  # min_channels wins.
  masks = criteria.uniform_masks(importance, 0.25, min_channels=1)
  np.testing.assert_array_equal(masks['a'], [True, True, True, False])  # Tie: lower kept.


def test_global_threshold_hand_computed_never_below_min_channels():
  importance = {'a': np.array([0.1, 0.2, 0.3]), 'b': np.array([5.0, 6.0, 0.05])}
  masks = criteria.global_threshold_masks(importance, 0.5, min_channels=2)
  # Budget 3: b's 0.05 and a's 0.1 go; every other channel would leave its group
  # below 2, so only two are pruned.
  np.testing.assert_array_equal(masks['a'], [False, True, True])
  np.testing.assert_array_equal(masks['b'], [True, True, False])
  masks = criteria.global_threshold_masks(importance, 0.5, min_channels=1)
  np.testing.assert_array_equal(masks['a'], [False, False, True])


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(st.lists(st.lists(st.floats(0, 10), min_size=1, max_size=8),
                           min_size=1, max_size=4),
                  st.floats(0, 1), st.integers(1, 3))
def test_global_threshold_properties(values, fraction, min_channels):
  importance = {f'g{i}': np.array(v) for i, v in enumerate(values)}
  masks = criteria.global_threshold_masks(importance, fraction, min_channels)
  total = sum(len(v) for v in values)
  pruned = sum(int((~m).sum()) for m in masks.values())
  allowed = sum(max(len(v) - min_channels, 0) for v in values)
  assert pruned == min(int(np.floor(fraction * total + 1e-9)), allowed)
  for name, mask in masks.items():
    assert mask.sum() >= min(min_channels, mask.size)
  # Every pruned channel is no more important than any kept channel of a group that
  # still had room to lose one.
  if pruned:
    worst_pruned = max(importance[n][~m].max() for n, m in masks.items() if (~m).any())
    for name, mask in masks.items():
      if mask.sum() > min_channels:
        assert importance[name][mask].min() >= worst_pruned


def test_least_fraction_bisects_to_the_target_and_refuses_the_impossible():
  ratio = lambda f: 1.0 - 0.8 * f  # Monotone, 0.2 at most.
  fraction = channel_baselines.least_fraction(ratio, 0.6)
  assert ratio(fraction) <= 0.6 and fraction == pytest.approx(0.5, abs=1e-5)
  assert channel_baselines.least_fraction(ratio, 1.0) == 0.0
  with pytest.raises(ValueError, match='target_macs_ratio=0.1 cannot be met'):
    channel_baselines.least_fraction(ratio, 0.1)
