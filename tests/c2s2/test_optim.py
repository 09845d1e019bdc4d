"""C2S2 selection as an optimiser: the proximal step, importance, masks, frozen weights."""

import flax.linen as nn
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

from c2s2 import optim, selection, surgery
from c2s2.graph import trace_channel_graph

SCALES = optim.SCALES_KEY


def params_with(scales, kernel=None):
  kernel = jnp.arange(6.0).reshape(2, 3) if kernel is None else kernel
  return {'dense': {'kernel': kernel}, SCALES: scales}


def one_step(tx, params, grads, project=None):
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  return (project(new) if project else new), state


floats = st.floats(-2.0, 2.0, width=32, allow_subnormal=False)


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(scale=st.lists(floats, min_size=1, max_size=6),
                  seed=st.integers(0, 2**16),
                  rate=st.sampled_from([0.1, 0.03, 1.0]),
                  strength=st.sampled_from([0.0, 0.3, 2.0, 20.0]))
def test_phase1_step_then_projection_is_the_proximal_step_bit_for_bit(scale, seed, rate,
                                                                        strength):
  s = jnp.asarray(scale, jnp.float32)
  g = jax.random.normal(jax.random.key(seed), s.shape)
  lambdas = {'a': strength}
  tx = optim.selection_optimizer(optax.sgd(0.5), 'phase1', rate, 0.01, lambdas)
  new, state = one_step(tx, params_with({'a': s}), params_with({'a': g}, jnp.ones((2, 3))),
                        optim.proximal_l1(rate, lambdas))
  expected = selection.proximal_sgd_step(s, g, rate, strength)
  np.testing.assert_array_equal(new[SCALES]['a'], expected)
  np.testing.assert_array_equal(optim.layer_state(state).importance['a'],
                                jnp.abs(expected))
  np.testing.assert_array_equal(optim.layer_state(state).masks['a'], 1.0)
  # The weights took sgd(0.5)'s step.
  np.testing.assert_array_equal(new['dense']['kernel'],
                                jnp.arange(6.0).reshape(2, 3) - 0.5)


def test_importance_sums_the_phase1_magnitudes_over_steps():
  tx = optim.selection_optimizer(optax.sgd(0.1), 'phase1', 0.1, 0.01, {'a': 1.0})
  project = optim.proximal_l1(0.1, {'a': 1.0})
  params = params_with({'a': jnp.array([1.0, 0.05, -0.5])})
  state = tx.init(params)
  grads = params_with({'a': jnp.array([0.0, 0.0, 0.0])}, jnp.zeros((2, 3)))
  seen = []
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = project(optax.apply_updates(params, updates))
    seen.append(np.abs(params[SCALES]['a']))
  # Without gradient each step shrinks |scale| by 0.1 * 1.0; the small one hits 0.
  np.testing.assert_allclose(seen[-1], [0.7, 0.0, 0.2], atol=1e-6)
  np.testing.assert_allclose(optim.layer_state(state).importance['a'], np.sum(seen, 0),
                             atol=1e-6)


def test_phase2_is_plain_sgd_at_the_weight_rate_and_keeps_the_state():
  tx = optim.selection_optimizer(optax.sgd(0.5), 'phase2', 0.1, 0.01, {'a': 5.0})
  s, g = jnp.array([1.0, 0.0, -0.5]), jnp.array([2.0, 3.0, -1.0])
  params = params_with({'a': s})
  state = tx.init(params)
  layers = optim.PruningLayerState({'a': jnp.array([1.0, 2.0, 3.0])},
                                   {'a': jnp.array([1.0, 0.0, 1.0])})
  state = optim.with_layer_state(state, layers)
  updates, after = tx.update(params_with({'a': g}, jnp.ones((2, 3))), state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new[SCALES]['a'], s - 0.01 * g)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                   optim.layer_state(after), layers))


def test_frozen_weights_keep_their_values_and_optimiser_state():
  weights_tx = optax.sgd(0.5, momentum=0.9)
  tx = optim.selection_optimizer(weights_tx, 'phase1', 0.1, 0.01, {'a': 0.0},
                                 train_weights=False)
  params = params_with({'a': jnp.ones(3)})
  state = tx.init(params)
  updates, after = tx.update(params_with({'a': jnp.ones(3)}, jnp.ones((2, 3))), state,
                             params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new['dense']['kernel'], params['dense']['kernel'])
  np.testing.assert_array_equal(new[SCALES]['a'], np.float32(0.9))  # Scales still move.
  assert jax.tree.structure(after) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, after.inner_states['weights'],
               state.inner_states['weights'])


def test_with_unit_gives_fresh_layers_and_keeps_the_weights_state():
  tx = optim.selection_optimizer(optax.sgd(0.5, momentum=0.9), 'phase1', 0.1, 0.01,
                                 {'a': 0.0, 'b': 0.0})
  params = params_with({})
  state = tx.init(params)
  trace = state.inner_states['weights']
  params, state = optim.with_unit(params, state, {'a': 3, 'b': 2})
  np.testing.assert_array_equal(params[SCALES]['b'], [1.0, 1.0])
  layers = optim.layer_state(state)
  np.testing.assert_array_equal(layers.importance['a'], [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(layers.masks['a'], [1.0, 1.0, 1.0])
  assert state.inner_states['weights'] is trace
  # The new state fits the optimiser of the unit: a step runs on it.
  tx.update(jax.tree.map(jnp.ones_like, params), state, params)


class TwoConvs(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
    return nn.Conv(2, (1, 1))(x)


@pytest.fixture(scope='module')
def two_convs():
  model, x = TwoConvs(), jnp.ones((1, 5, 5, 3))
  variables = model.init(jax.random.key(0), x)
  graph = trace_channel_graph(model.apply, variables, x)
  return variables, graph


def test_forward_params_fold_the_scales_and_in_binary_mode_the_masks(two_convs):
  variables, graph = two_convs
  (name,) = [g.name for g in graph.prunable()]
  scale, mask = jnp.array([0.5, 2.0, 1.0, 3.0]), jnp.array([1.0, 0.0, 1.0, 1.0])
  tx = optim.selection_optimizer(optax.sgd(0.1), 'phase2', 0.1, 0.01, {name: 1.0})
  params = {**variables['params'], SCALES: {name: scale}}
  state = optim.with_layer_state(
      tx.init(params), optim.PruningLayerState({name: jnp.zeros(4)}, {name: mask}))
  real = optim.forward_params(graph, binary=False)(params, state)
  binary = optim.forward_params(graph, binary=True)(params, state)
  assert SCALES not in real
  jax.tree.map(np.testing.assert_array_equal, real,
               surgery.fold_scales(variables['params'], graph, {name: scale}))
  jax.tree.map(np.testing.assert_array_equal, binary,
               surgery.fold_scales(variables['params'], graph, {name: scale}, {name: mask}))
  assert optim.kept_fraction(params, state)['kept_fraction'] == 1.0
  zeroed = {**params, SCALES: {name: scale * mask}}
  assert optim.kept_fraction(zeroed, state)['kept_fraction'] == 0.75
  assert optim.kept_fraction({**params, SCALES: {}}, state) == {}


def test_unknown_phase_is_refused():
  with pytest.raises(ValueError, match="phase='phase3'"):
    optim.pruning_layer_optimizer('phase3', 0.1, 0.01, {})
