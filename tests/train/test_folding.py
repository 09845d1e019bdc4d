"""Batch-norm folding: a hand-computed case, equivalence on random models, refusals."""

import flax.linen as nn
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from train import folding


class ConvNormDense(nn.Module):
  """conv -> norm -> relu -> dense -> norm: both norms fold."""
  features: int
  conv_bias: bool

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), use_bias=self.conv_bias)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x))
    x = nn.Dense(3)(x.mean((1, 2)))
    return nn.BatchNorm(use_running_average=True)(x)


def random_variables(model, x, seed):
  """Random variables of `model` (numpy draws: no initialiser compiles); variances > 0."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    return jnp.asarray(np.exp(noise) if path[-1].key == 'var' else noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_hand_computed_fold():
  pair = folding.FoldPair(layer='conv', norm='bn', epsilon=1.0, layer_has_bias=False)
  variables = {'params': {'conv': {'kernel': jnp.array([[[[2.0]]]])},
                          'bn': {'scale': jnp.array([4.0]), 'bias': jnp.array([5.0])}},
               'batch_stats': {'bn': {'mean': jnp.array([1.0]), 'var': jnp.array([3.0])}}}
  folded = folding.fold_batch_norm(variables, (pair,))
  # s = 4 / sqrt(3 + 1) = 2: kernel 2 * 2; bias (0 - 1) * 2 + 5.
  assert folded['params'] == {'conv': {'kernel': jnp.array([[[[4.0]]]])}}
  assert folded[folding.FOLDED_BIAS] == {'conv': {'bias': jnp.array([3.0])}}
  assert folded['batch_stats'] == {}
  own_bias = folding.FoldPair('conv', 'bn', 1.0, layer_has_bias=True)
  variables['params']['conv']['bias'] = jnp.array([0.5])
  folded = folding.fold_batch_norm(variables, (own_bias,))
  assert float(folded['params']['conv']['bias'][0]) == 4.0  # (0.5 - 1) * 2 + 5
  assert folded[folding.FOLDED_BIAS] == {}
  assert folding.fold_batch_norm(variables, ()) is variables


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(features=st.integers(1, 5), conv_bias=st.booleans(),
                  seed=st.integers(0, 2**16))
def test_folded_model_equals_the_model(features, conv_bias, seed):
  model = ConvNormDense(features, conv_bias)
  x = jax.random.normal(jax.random.key(seed), (2, 5, 5, 2))
  variables = random_variables(model, x, seed)
  found = folding.find_foldable(model.apply, variables, x)
  assert [(p.layer, p.norm, p.layer_has_bias) for p in found.pairs] == [
      ('Conv_0', 'BatchNorm_0', conv_bias), ('Dense_0', 'BatchNorm_1', True)]
  assert found.pairs[0].epsilon == pytest.approx(1e-3) and not found.kept
  folded = folding.fold_batch_norm(variables, found.pairs)
  assert 'BatchNorm_0' not in folded['params'] and not folded['batch_stats']
  expected = model.apply(variables, x)
  actual = folding.folded_apply(model.apply, found.pairs)(folded, x)
  np.testing.assert_allclose(actual, expected, rtol=1e-4,
                             atol=1e-5 * float(jnp.abs(expected).max()))
  jitted = jax.jit(folding.folded_apply(model.apply, found.pairs))(folded, x)
  np.testing.assert_allclose(jitted, actual, rtol=1e-5, atol=1e-6)


class Unfoldable(nn.Module):
  """Norms that must stay: output read twice, training mode, after a relu, shared conv."""

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(2, (1, 1), name='twice')(x)
    a = nn.BatchNorm(use_running_average=True, name='bn_twice')(y) + y
    b = nn.BatchNorm(use_running_average=False, name='bn_train')(
        nn.Conv(2, (1, 1), name='train_conv')(x))
    c = nn.BatchNorm(use_running_average=True, name='bn_relu')(nn.relu(x))
    shared = nn.Conv(2, (1, 1), name='shared')
    d = nn.BatchNorm(use_running_average=True, name='bn_shared')(shared(shared(x)))
    return a + b + c + d


def test_norms_that_cannot_fold_say_why():
  model = Unfoldable()
  x = jnp.ones((1, 3, 3, 2))
  variables = model.init(jax.random.key(0), x)
  found = folding.find_foldable(
      lambda v, x: model.apply(v, x, mutable=['batch_stats'])[0], variables, x)
  assert found.pairs == ()
  assert found.kept == {
      'bn_twice': 'the output of twice is also read elsewhere',
      'bn_train': 'it normalises with batch statistics (training mode)',
      'bn_relu': 'its input is not a conv or dense output',
      'bn_shared': 'shared is called 2 times'}
