"""The optax wrapper: gradients, constraint after training, and the packed forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cci
from cci import efficiency

PARAMS = {'conv': {'kernel': jax.random.normal(jax.random.key(0), (3, 3, 16, 4))},
          'bias': jnp.ones(4)}


def spec(method, **kw):
  return cci.SparsitySpec(grouped=('conv/kernel',), method=method, group_size=8, keep=2,
                          begin_step=0, end_step=kw.pop('end_step', 0), **kw)


def loss(params):
  return jnp.sum(3.0 * params['conv']['kernel']) + jnp.sum(params['bias'])


@pytest.mark.parametrize('method, reaches_pruned', [('dynamic', True), ('oneshot', False),
                                                     ('gradual', False)])
def test_straight_through_gradient_reaches_pruned_weights_only_in_dynamic(
    method, reaches_pruned):
  s = spec(method, freeze_step=100)
  tx = cci.sparsify(optax.sgd(0.1), s)
  state = tx.init(PARAMS)
  mask = np.asarray(cci.find_state(state).masks['conv']['kernel'])
  assert mask.mean() == 0.25
  grads = jax.grad(lambda p: loss(cci.forward_params(p, state, s)))(PARAMS)
  pruned = np.asarray(grads['conv']['kernel'])[~mask]
  assert np.all(pruned != 0) if reaches_pruned else np.all(pruned == 0)


@pytest.mark.parametrize('method', ['oneshot', 'gradual', 'dynamic'])
def test_training_ends_exactly_cci_sparse(method):
  # end_step is no multiple of update_every: gradual must still reach keep at the end.
  s = spec(method, end_step=11, update_every=4, freeze_step=15)
  tx = cci.sparsify(optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, 0.9)), s)
  target = jax.random.normal(jax.random.key(1), (3, 3, 16, 4))

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: jnp.sum(
        (cci.forward_params(p, opt_state, s)['conv']['kernel'] - target) ** 2))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = PARAMS, tx.init(PARAMS)
  for _ in range(20):
    params, opt_state = step(params, opt_state)
  kernel = np.asarray(params['conv']['kernel'])
  mask = np.asarray(cci.find_state(opt_state).masks['conv']['kernel'])
  assert np.all(np.asarray(cci.kept_per_group(mask, 8)) == 2)
  assert np.all(kernel[~mask] == 0)
  assert np.all(np.asarray(cci.kept_per_group(kernel != 0, 8)) <= 2)
  np.testing.assert_array_equal(cci.cci_mask(jnp.asarray(kernel), 8, 2), mask)
  assert np.all(np.asarray(params['bias']) != 1.0)  # Ungrouped leaves still train.


def test_dynamic_mask_follows_the_latent_weights_until_frozen():
  s = spec('dynamic', end_step=0, freeze_step=3, refinement=0.0)
  tx = cci.sparsify(optax.sgd(1.0), s)
  opt_state = tx.init(PARAMS)
  flip = -10 * PARAMS['conv']['kernel'] * ~cci.find_state(opt_state).masks['conv']['kernel']
  grads = {'conv': {'kernel': flip}, 'bias': jnp.zeros(4)}
  updates, new_state = tx.update(grads, opt_state, PARAMS)
  params = optax.apply_updates(PARAMS, updates)
  # Pruned latent weights grew tenfold and now win their groups.
  assert not np.array_equal(cci.find_state(new_state).masks['conv']['kernel'],
                            cci.find_state(opt_state).masks['conv']['kernel'])
  np.testing.assert_array_equal(cci.find_state(new_state).masks['conv']['kernel'],
                                cci.cci_mask(params['conv']['kernel'], 8, 2))


class TinyNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(16, (3, 3), strides=(2, 2), padding='SAME', name='a')(x)
    x = nn.relu(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name='b')(x))
    return nn.Dense(3, name='head')(x.mean((1, 2)))


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('step', [0, 2, 3, 5])  # Before, into, at and after the freeze.
def test_dynamic_gradient_and_update_follow_their_definition(step, jit):
  s = spec('dynamic', freeze_step=3, refinement=0.1)
  tx = cci.sparsify(optax.sgd(0.5), s)
  state = tx.init(PARAMS)._replace(step=jnp.asarray(step, jnp.int32))
  w, mask = PARAMS['conv']['kernel'], cci.find_state(state).masks['conv']['kernel']
  g = jax.random.normal(jax.random.key(2), w.shape)
  frozen, next_frozen = step >= 3, step + 1 >= 3
  # METHODS.md 1.2 written out: straight-through + SR-STE until frozen, then masked.
  expected_grad = g * mask if frozen else g + 0.1 * ~mask * w
  latent = w - 0.5 * expected_grad
  expected_mask = cci.cci_mask(latent, 8, 2) if step + 1 <= 3 else mask
  assert step >= 3 or not np.array_equal(expected_mask, mask)  # The mask moves.
  expected = latent * expected_mask if next_frozen else latent

  def train_step(params, state):
    grads = jax.grad(lambda p: jnp.sum(
        g * cci.forward_params(p, state, s)['conv']['kernel']))(params)
    updates, state = tx.update(grads, state, params)
    return grads, optax.apply_updates(params, updates), state

  grads, params, new_state = (jax.jit(train_step) if jit else train_step)(PARAMS, state)
  np.testing.assert_allclose(grads['conv']['kernel'], expected_grad, rtol=1e-6)
  np.testing.assert_array_equal(new_state.masks['conv']['kernel'], expected_mask)
  np.testing.assert_allclose(params['conv']['kernel'], expected, rtol=1e-6, atol=1e-7)
  assert not next_frozen or np.all(np.asarray(params['conv']['kernel'])[~expected_mask]
                                   == 0)
  np.testing.assert_array_equal(cci.forward_params(PARAMS, state, s)['conv']['kernel'],
                                w * mask)


def test_packed_forward_equals_masked_dense_forward():
  model = TinyNet()
  x = jax.random.normal(jax.random.key(2), (2, 9, 9, 8))
  variables = model.init(jax.random.key(3), x)
  params = variables['params']
  packed, masked = {}, jax.tree.map(lambda a: a, params)
  for layer in ('a', 'b', 'head'):
    kernel = params[layer]['kernel']
    mask = cci.cci_mask(kernel, 8, 2)
    packed[layer] = cci.pack(kernel, mask, 8)
    masked[layer]['kernel'] = kernel * mask
  expected = model.apply({'params': masked}, x)
  got = cci.packed_apply(model, {'params': params}, packed, 8, 2, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_wave_cycles_hand_computed():
  # 4 PEs; groups with 1, 3, 0, 2 | 2, 2 nonzeros: waves cost 3 and 2.
  assert efficiency.wave_cycles(np.array([1, 3, 0, 2, 2, 2]), 4) == 5


def test_accelerator_model_cci_is_fully_used_and_beats_unstructured():
  kernel = np.asarray(jax.random.normal(jax.random.key(4), (3, 3, 64, 64)))
  mask = np.asarray(cci.cci_mask(jnp.asarray(kernel), 8, 2))
  cci_layer = efficiency.layer_efficiency('l', mask, 16, 8, True, 64)
  loose = efficiency.unstructured_mask(kernel, 0.25)
  assert loose.mean() == 0.25
  unstructured = efficiency.layer_efficiency('l', loose, 16, 8, False, 64)
  assert cci_layer.utilisation == 1.0
  assert cci_layer.cycles * 4 == cci_layer.cycles_dense
  assert unstructured.cycles > cci_layer.cycles
  assert efficiency.storage_bits(cci_layer, 8, 'cci') == mask.sum() * (32 + 3)


def test_gradual_never_revives_a_pruned_weight():
  s = spec('gradual', end_step=4, update_every=1)
  tx = cci.sparsify(optax.sgd(1.0), s)
  params = {'conv': {'kernel': jnp.ones((1, 1, 8, 1)) * jnp.arange(1.0, 9.0)[:, None]},
            'bias': jnp.ones(1)}
  opt_state = tx.init(params)
  # Updates that would make pruned (zeroed) weights large if they were ranked.
  for _ in range(4):
    kept_before = np.asarray(cci.find_state(opt_state).masks['conv']['kernel'])
    push = {'conv': {'kernel': -100.0 * ~kept_before}, 'bias': jnp.zeros(1)}
    updates, opt_state = tx.update(push, opt_state, params)
    params = optax.apply_updates(params, updates)
    kept = np.asarray(cci.find_state(opt_state).masks['conv']['kernel'])
    assert not np.any(kept & ~kept_before)
  assert int(kept.sum()) == 2


def test_unstructured_gradual_reaches_the_density_and_never_revives():
  s = cci.SparsitySpec(grouped=('conv/kernel',), method='gradual', group_size=8, keep=2,
                       begin_step=0, end_step=6, update_every=2, pattern='unstructured')
  tx = cci.sparsify(optax.sgd(0.05, 0.9), s)
  params, state = PARAMS, tx.init(PARAMS)
  assert np.asarray(cci.find_state(state).masks['conv']['kernel']).all()  # Density 1.
  previous = None
  for _ in range(8):
    grads = jax.grad(lambda p: jnp.sum(cci.forward_params(p, state, s)['conv']['kernel']
                                       ** 2))(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    mask = np.asarray(cci.find_state(state).masks['conv']['kernel'])
    if previous is not None:
      assert not (mask & ~previous).any()  # A pruned weight stays pruned.
    previous = mask
  kernel = np.asarray(params['conv']['kernel'])
  assert mask.sum() == round(0.25 * mask.size)
  assert (kernel[~mask] == 0).all()
  # Not CCI: some group keeps other than 2 of its 8 weights.
  assert (np.asarray(cci.kept_per_group(mask, 8)) != 2).any()
