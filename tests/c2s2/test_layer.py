"""The pruning layer and its insertion into a model by interception."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2s2 import layer
from train import models


def test_modes_hand_computed():
  x = jnp.array([[1.0, 2.0, 3.0]])
  scale = jnp.array([0.5, 0.0, 2.0])
  np.testing.assert_allclose(layer.prune_channels(x, scale, 'off'), x)
  np.testing.assert_allclose(layer.prune_channels(x, scale, 'real'), [[0.5, 0.0, 6.0]])
  np.testing.assert_allclose(
      layer.prune_channels(x, scale, 'binary', jnp.array([1.0, 1.0, 0.0])), [[0.5, 0.0, 0.0]])
  with pytest.raises(ValueError, match='mode'):
    layer.prune_channels(x, scale, 'soft')


def test_module_initialises_scale_to_one_and_is_identity():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 5))
  variables = layer.PruningLayer().init(jax.random.key(1), x)
  np.testing.assert_array_equal(variables['params']['scale'], np.ones(5))
  np.testing.assert_array_equal(layer.PruningLayer().apply(variables, x), x)


def test_binary_equals_real_where_the_mask_is_all_ones():
  x = jax.random.normal(jax.random.key(0), (3, 6))
  scale = jax.random.normal(jax.random.key(1), (6,))
  ones = jnp.ones(6)
  np.testing.assert_array_equal(layer.prune_channels(x, scale, 'binary', ones),
                                layer.prune_channels(x, scale, 'real'))
  real_grad = jax.grad(lambda s: layer.prune_channels(x, s, 'real').sum())(scale)
  binary_grad = jax.grad(lambda s: layer.prune_channels(x, s, 'binary', ones).sum())(scale)
  np.testing.assert_allclose(real_grad, binary_grad)


def test_binary_mode_gives_no_gradient_to_pruned_scales():
  x = jnp.ones((2, 3))
  mask = jnp.array([1.0, 0.0, 1.0])
  grad = jax.grad(lambda s: layer.prune_channels(x, s, 'binary', mask).sum())(jnp.ones(3))
  np.testing.assert_array_equal(grad, [2.0, 0.0, 2.0])


def _resnet():
  model = models.build_model('resnet8', 10)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  return model, model.init(jax.random.key(1), x, train=False), x


def test_augmenting_with_unit_scales_changes_no_output():
  model, variables, x = _resnet()
  plain = model.apply(variables, x, train=False)
  sites = ['stem_bn', 'stage1_block0/bn1', 'stage2_block0/bn1', 'stage3_block0/bn2']
  widths = {'stem_bn': 16, 'stage1_block0/bn1': 16, 'stage2_block0/bn1': 32,
            'stage3_block0/bn2': 64}
  with layer.pruning_layers({s: jnp.ones(widths[s]) for s in sites}):
    augmented = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(plain, augmented)


def test_zero_scale_silences_a_channel_inside_the_model():
  model, variables, x = _resnet()
  seen = {}

  def record(next_fun, args, kwargs, context):
    if '/'.join(context.module.path) == 'stage1_block0/conv2':
      seen['input'] = args[0]
    return next_fun(*args, **kwargs)

  scale = jnp.ones(16).at[3].set(0.0)
  with layer.pruning_layers({'stage1_block0/bn1': scale}), nn.intercept_methods(record):
    model.apply(variables, x, train=False)
  assert np.all(np.asarray(seen['input'])[..., 3] == 0)
  assert np.any(np.asarray(seen['input'])[..., 4] != 0)


def test_wrong_scale_size_names_the_site():
  model, variables, x = _resnet()
  with (pytest.raises(ValueError, match='stage1_block0/bn1'),
        layer.pruning_layers({'stage1_block0/bn1': jnp.ones(7)})):
    model.apply(variables, x, train=False)
