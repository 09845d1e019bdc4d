"""A linen and an NNX version of the same CIFAR ResNet decide the same (issue 17).

`train.models.CifarResNet(shortcut='B')` and tests/nnx/models.NnxCifarResNet name their
layers alike; with the linen weights loaded into the NNX model, CCI chooses the same
masks and C2S2's graph, criteria and surgery the same compact widths and function.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import c2s2
import cci
from c2s2 import criteria
from tests.nnx import models
from train.models import CifarResNet

DEPTHS = [8, pytest.param(20, marks=pytest.mark.slow)]


def _merge(a, b):
  """Two nested dicts with disjoint leaves as one."""
  out = dict(a)
  for key, value in b.items():
    out[key] = _merge(out[key], value) if key in out else value
  return out


@functools.cache
def pair(depth: int):
  """The linen model and variables, the NNX model holding the same arrays, an input."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  linen = CifarResNet(depth, 10, shortcut='B')
  variables = jax.jit(functools.partial(linen.init, train=False))(jax.random.key(1), x)
  variables['batch_stats'] = jax.tree.map(  # non-trivial statistics
      lambda v: v + jax.random.uniform(jax.random.key(2), v.shape, minval=0.2, maxval=0.8),
      variables['batch_stats'])
  model = models.build(functools.partial(models.NnxCifarResNet, depth), 5)
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, _merge(variables['params'], variables['batch_stats']))
  nnx.update(model, state)
  model.eval()
  return linen, variables, model, x


@pytest.mark.parametrize('depth', DEPTHS)
def test_same_weights_same_function(depth):
  linen, variables, model, x = pair(depth)
  np.testing.assert_allclose(model(x), linen.apply(variables, x, train=False),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', cci.METHODS)
@pytest.mark.parametrize('depth', DEPTHS)
def test_same_weights_same_cci_masks(depth, method):
  _, variables, model, _ = pair(depth)
  masks = []
  for params in (variables['params'], nnx.state(model, nnx.Param)):
    # keep=k from step 0 on: the masks of the initial weights are final ones.
    spec = cci.spec_for(params, exclude='head', method=method, group_size=4, keep=1,
                        end_step=0, freeze_step=10)
    opt_state = cci.sparsify(optax.sgd(0.1), spec).init(params)
    masks.append({cci.masks.path_of(kp): np.asarray(m) for kp, m in
                  jax.tree_util.tree_leaves_with_path(cci.find_state(opt_state).masks)})
  linen_masks, nnx_masks = masks
  assert sorted(linen_masks) == sorted(nnx_masks)
  grouped = [p for p, m in linen_masks.items() if m.ndim]
  assert len(grouped) == depth  # 6n block convs and 2 shortcut convs (not the stem)
  for path, mask in linen_masks.items():
    np.testing.assert_array_equal(nnx_masks[path], mask, err_msg=path)
    if mask.ndim:
      np.testing.assert_array_equal(cci.kept_per_group(mask, 4), 1, err_msg=path)


@pytest.mark.parametrize('depth', DEPTHS)
def test_same_weights_same_c2s2_graph_and_compact_widths(depth):
  linen, variables, model, x = pair(depth)
  linen_graph = c2s2.trace_channel_graph(lambda v, i: linen.apply(v, i, train=False),
                                         variables, x)
  nnx_graph = c2s2.nnx.trace_channel_graph(model, x)
  assert nnx_graph == linen_graph  # groups, sites, couplings, reasons
  importance = {g.name: criteria.filter_l1_norms(variables['params'], g)
                for g in linen_graph.prunable()}
  nnx_params = c2s2.nnx.variables_of(model)['params']
  for group in nnx_graph.prunable():
    np.testing.assert_allclose(criteria.filter_l1_norms(nnx_params, group),
                               importance[group.name], rtol=1e-6)
  masks = criteria.uniform_masks(importance, 0.5, min_channels=2)
  sliced = c2s2.slice_variables(variables, c2s2.plan(linen_graph, masks, variables))
  compact = c2s2.nnx.compact(model, nnx_graph, masks)
  assert jax.tree.map(jnp.shape, c2s2.nnx.variables_of(compact)) == jax.tree.map(
      jnp.shape, sliced)
  for name, mask in masks.items():
    for producer in nnx_graph.group(name).producers:
      module = compact
      for key in producer.split('/'):
        module = getattr(module, key)
      assert module.out_features == mask.sum() < mask.size, producer
  np.testing.assert_allclose(
      compact(x), c2s2.compact_apply(linen)(sliced, x, train=False), rtol=1e-5,
      atol=1e-5)
