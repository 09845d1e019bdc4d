"""C2S2 selection functions: proximal step, binarisation, restore order, decisions."""

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2s2 import selection

floats = st.floats(-10, 10, allow_nan=False, width=32)


def test_soft_threshold_hand_computed():
  x = jnp.array([-2.0, -0.5, 0.0, 0.3, 1.5])
  np.testing.assert_allclose(selection.soft_threshold(x, 0.5), [-1.5, 0.0, 0.0, 0.0, 1.0])


@settings(deadline=None, max_examples=50)
@given(hnp.arrays(np.float32, st.integers(1, 20), elements=floats),
       st.floats(0, 5, allow_nan=False))
def test_soft_threshold_is_the_l1_prox(x, t):
  y = np.asarray(selection.soft_threshold(jnp.asarray(x), t))
  assert np.all(np.abs(y) <= np.abs(x) + 1e-6)  # Shrinks.
  assert np.all(y[np.abs(x) <= t] == 0)  # Exact zeros inside the threshold.
  assert np.all(np.sign(y) * np.sign(x) >= 0)  # Never flips a sign.
  np.testing.assert_allclose(np.abs(x) - np.abs(y), np.minimum(np.abs(x), t), atol=1e-5)


def test_proximal_steps_drive_unused_channels_to_exact_zero():
  scale = jnp.ones(4)
  grad = jnp.array([0.0, 0.0, -2.0, -2.0])  # Channels 2, 3 matter to the loss.
  for _ in range(60):
    scale = selection.proximal_sgd_step(scale, grad, learning_rate=0.1, strength=0.5)
  assert list(np.asarray(scale)[:2]) == [0.0, 0.0]
  assert np.all(np.asarray(scale)[2:] > 1.0)


def test_binarize_keeps_nonzero_and_min_channels():
  scale = np.array([0.0, 0.2, 0.0, 0.0])
  importance = np.array([5.0, 9.0, 7.0, 1.0])
  np.testing.assert_array_equal(selection.binarize(scale, importance, 1),
                                [False, True, False, False])
  np.testing.assert_array_equal(selection.binarize(scale, importance, 3),
                                [True, True, True, False])
  np.testing.assert_array_equal(selection.binarize(np.zeros(2), np.zeros(2), 5), [True, True])


@settings(deadline=None, max_examples=50)
@given(hnp.arrays(np.float32, st.integers(1, 30), elements=st.sampled_from([0.0, 0.5, -1.0])),
       st.integers(1, 40))
def test_binarize_never_keeps_fewer_than_min_channels(scale, min_channels):
  importance = np.abs(scale) + np.arange(scale.size, dtype=np.float32)
  mask = selection.binarize(scale, importance, min_channels)
  assert mask.sum() >= min(min_channels, scale.size)
  assert np.all(mask[scale != 0])


def test_restore_order_by_importance_ties_to_lower_index():
  mask = np.array([True, False, False, False, True])
  importance = np.array([9.0, 1.0, 3.0, 3.0, 0.0])
  np.testing.assert_array_equal(selection.restore_order(mask, importance), [2, 3, 1])
  np.testing.assert_array_equal(selection.restore(mask, importance, 2),
                                [True, False, True, True, True])


def test_cost_weights_have_mean_one():
  weights = selection.cost_weights({'a': 10, 'b': 30})
  assert weights == {'a': 0.5, 'b': 1.5}


@pytest.mark.parametrize('within,retry,policy,expected', [
    (True, 0, 'restore', 'accept'), (False, 0, 'restore', 'restore'),
    (False, 1, 'halve_lambda', 'halve_lambda'), (False, 3, 'restore', 'give_up'),
])
def test_decide(within, retry, policy, expected):
  assert selection.decide(within, retry, 3, policy) == expected


def test_decide_rejects_unknown_policy():
  with pytest.raises(ValueError, match='on_over_budget'):
    selection.decide(True, 0, 3, 'panic')


def test_within_budget():
  assert selection.within_budget({'top1': 0.9}, {'top1': 0.895}, 0.005)
  assert not selection.within_budget({'top1': 0.9}, {'top1': 0.89}, 0.005)


def test_round_up_keeps_a_multiple_of_channels_most_important_first():
  mask = np.array([True, False, False, True, False, False])
  importance = np.array([9.0, 1.0, 5.0, 8.0, 6.0, 0.0])
  np.testing.assert_array_equal(selection.round_up(mask, importance, 4),
                                [True, False, True, True, True, False])
  assert selection.round_up(mask, importance, 8).all()  # Capped at the layer's size.
  np.testing.assert_array_equal(selection.round_up(mask, importance, 1), mask)


@settings(deadline=None, max_examples=50)
@given(hnp.arrays(np.bool_, st.integers(1, 40)), st.integers(1, 16))
def test_round_up_property(mask, multiple):
  out = selection.round_up(mask, np.zeros(mask.size), multiple)
  assert np.all(out[mask])
  assert out.sum() % multiple == 0 or out.all()
  assert out.sum() - mask.sum() < multiple


def test_within_budget_on_miou_ignores_top1():
  reference, current = {'top1': 0.9, 'miou': 0.6}, {'top1': 0.9, 'miou': 0.55}
  assert selection.within_budget(reference, current, 0.005)  # top-1 unchanged.
  assert not selection.within_budget(reference, current, 0.02, 'miou')
  assert selection.within_budget(reference, current, 0.05, 'miou')


def test_unit_budget_cumulative_and_paced_hand_computed():
  assert selection.unit_budget(0.02, 0, 4, 'cumulative') == 0.02
  assert selection.unit_budget(0.02, 3, 4, 'cumulative') == 0.02
  assert [selection.unit_budget(0.02, u, 4, 'paced') for u in range(4)] == \
      pytest.approx([0.005, 0.01, 0.015, 0.02])
  with pytest.raises(ValueError, match="budget='greedy'"):
    selection.unit_budget(0.02, 0, 4, 'greedy')


def _kept_ratio(masks):
  """A stand-in MACs ratio: the kept fraction of all channels."""
  return sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values())


def test_land_on_target_keeps_the_most_important_channels_of_the_emptiest_layer():
  masks = {'a': np.array([1, 0, 0, 0, 0, 0, 0, 1], bool), 'b': np.ones(8, bool)}
  importance = {'a': np.arange(8.0), 'b': np.zeros(8)}
  # Kept 10/16 = 0.625; 0.7 needs 12: channels 6 and 5 of layer a (most important).
  for tolerance in (0.1, 0.0):  # 0.75 overshoots 0.7 * 1.0, but 0.625 is below 0.7.
    landed, changed = selection.land_on_target(masks, importance, _kept_ratio, 0.7,
                                               tolerance, 2)
    assert changed
    np.testing.assert_array_equal(landed['a'], [1, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(landed['b'], np.ones(8, bool))
  # 0.65: 0.75 overshoots 0.65 * 1.05 and 0.625 is within 0.65 * 0.95: nothing kept.
  same, changed = selection.land_on_target(masks, importance, _kept_ratio, 0.65, 0.05, 2)
  assert not changed and all((same[n] == masks[n]).all() for n in masks)
  same, changed = selection.land_on_target(masks, importance, _kept_ratio, 0.6, 0.0, 2)
  assert not changed


@settings(deadline=None, max_examples=50)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.data(),
       st.floats(0, 1), st.floats(0, 0.2), st.integers(1, 4))
def test_land_on_target_lands_within_the_tolerance_by_the_least_restoring(
    sizes, data, target, tolerance, multiple):
  masks = {f'l{i}': np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
           for i, n in enumerate(sizes)}
  importance = {n: np.arange(m.size, dtype=float) for n, m in masks.items()}
  landed, changed = selection.land_on_target(masks, importance, _kept_ratio, target,
                                             tolerance, multiple)
  for n in masks:
    assert (landed[n] >= masks[n]).all()  # Only keeps channels again.
  assert changed == any((landed[n] != masks[n]).any() for n in masks)
  every = all(m.all() for m in landed.values())
  assert _kept_ratio(landed) >= target * (1 - tolerance) - 1e-12 or every
  if changed and not every:  # Before its last restore (at most `multiple`): below.
    total = sum(m.size for m in masks.values())
    assert (sum(m.sum() for m in landed.values()) - multiple) / total < target
