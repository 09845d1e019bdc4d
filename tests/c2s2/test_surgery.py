"""Surgery: the physically pruned model computes what the masked model computes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from c2s2 import layer, surgery
from c2s2.graph import trace_channel_graph
from train import models


def _setup(name, shortcut='A', size=16, seed=0, width=None):
  widths = width and {k: width for k in models.default_widths(name, 10, shortcut)}
  model = models.build_model(name, 10, widths=widths, shortcut=shortcut,
                             conv_impl='xla')
  x = jax.random.normal(jax.random.key(seed), (2, size, size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed + 1), x)
  # Non-trivial running statistics, so folding and slicing them is exercised.
  variables['batch_stats'] = jax.tree.map(
      lambda v: v + 0.3 * jax.random.uniform(jax.random.key(seed + 2), v.shape),
      variables['batch_stats'])
  graph = trace_channel_graph(lambda v, x: model.apply(v, x, train=False), variables, x)
  return model, variables, x, graph


def _random_pruning(graph, names, seed):
  """Random masks (at least one channel kept) and random nonzero scales."""
  rng = np.random.default_rng(seed)
  masks, scales = {}, {}
  for name in names:
    size = graph.group(name).size
    mask = rng.random(size) < 0.5
    mask[rng.integers(size)] = True
    masks[name] = mask
    scales[name] = jnp.asarray(rng.uniform(0.5, 1.5, size), jnp.float32)
  return masks, scales


def _masked_logits(model, variables, graph, masks, scales, x):
  site_scales = {s: scales[n] for n in masks for s in graph.group(n).sites}
  site_masks = {s: jnp.asarray(masks[n], jnp.float32)
                for n in masks for s in graph.group(n).sites}
  with layer.pruning_layers(site_scales, site_masks):  # Traced inside: intercepted.
    return jax.jit(functools.partial(model.apply, train=False))(variables, x)


def _compact(name, shortcut, variables, graph, masks, scales):
  params = variables['params']
  for n, mask in masks.items():
    params = surgery.fold_scale(params, graph.group(n), scales[n] * mask)
  folded = {**variables, 'params': params}
  sliced = surgery.slice_variables(folded, surgery.plan(graph, masks, folded))
  widths = models.kernel_widths(sliced['params'], models.default_widths(name, 10, shortcut))
  return models.build_model(name, 10, widths=widths, shortcut=shortcut,
                             conv_impl='xla'), sliced


@pytest.mark.parametrize('name,shortcut,size,streams,width', [
    ('vgg16', 'A', 32, False, 8),  # Slim: 8 channels per conv.
    ('resnet8', 'A', 16, False, None),  # Shortcut A: every reported row's architecture.
    ('resnet8', 'B', 16, True, None),  # prune_residual_stream: joined groups too.
    # Segmentation: transposed convs and concatenated skips; dilated convs, parallel
    # branches concatenated, bilinear resizes and residual streams.
    ('unet', 'A', 16, False, None),
    ('deeplab', 'A', 16, True, None),
    # Bottleneck blocks (tests/foreign's BottleneckNet covers them by default).
    pytest.param('resnet50', 'A', 32, False, 8, marks=pytest.mark.slow),
])
def test_masked_and_physically_pruned_models_agree(name, shortcut, size, streams, width):
  model, variables, x, graph = _setup(name, shortcut, size, width=width)
  names = [g.name for g in graph.prunable() if streams or not g.joined]
  assert names
  if streams:
    assert any(graph.group(n).joined for n in names)
  masks, scales = _random_pruning(graph, names, seed=len(names))
  expected = _masked_logits(model, variables, graph, masks, scales, x)
  compact, sliced = _compact(name, shortcut, variables, graph, masks, scales)
  assert jax.tree.map(jnp.shape, sliced) == jax.tree.map(
      lambda a: a.shape, jax.eval_shape(
          functools.partial(compact.init, train=False), jax.random.key(0), x))
  np.testing.assert_allclose(
      jax.jit(functools.partial(compact.apply, train=False))(sliced, x), expected,
      rtol=1e-5, atol=1e-5)


def test_optimiser_state_is_sliced_like_the_parameters():
  """One more SGD-momentum step after surgery equals the masked model's step."""
  model, variables, x, graph = _setup('resnet8')
  labels = jnp.array([1, 7])
  names = [g.name for g in graph.prunable() if not g.joined]
  masks, _ = _random_pruning(graph, names, seed=3)
  ones = {n: jnp.ones(graph.group(n).size) for n in names}
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))

  def loss(params, batch_stats, m, pruned_model, sites):
    def f(p):
      with layer.pruning_layers(*sites):
        logits, _ = pruned_model.apply({'params': p, 'batch_stats': batch_stats}, x,
                                       train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.grad(f))(params)

  def sgd(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  sites = ({s: ones[n] for n in names for s in graph.group(n).sites},
           {s: jnp.asarray(masks[n], jnp.float32) for n in names
            for s in graph.group(n).sites})
  params, opt_state = variables['params'], tx.init(variables['params'])
  for _ in range(2):  # Momentum that is not zero.
    params, opt_state = sgd(params, opt_state,
                            loss(params, variables['batch_stats'], masks, model, sites))
  current = {**variables, 'params': params}
  removal = surgery.plan(graph, masks, current)
  masked_next, _ = sgd(params, opt_state,
                       loss(params, variables['batch_stats'], masks, model, sites))
  compact, sliced = _compact('resnet8', 'A', current, graph, masks, ones)
  compact_opt = surgery.slice_params_like(opt_state, params, removal)
  compact_next, _ = sgd(sliced['params'], compact_opt,
                        loss(sliced['params'], sliced['batch_stats'], None, compact, ({}, {})))
  expected = surgery.slice_variables({'params': masked_next}, {
      k: v for k, v in removal.items() if k[0] == 'params'})['params']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               compact_next, expected)


def test_fold_scale_into_batch_norm_hand_computed():
  _, variables, _, graph = _setup('resnet8')
  group = graph.group('stage1_block0/conv1')
  s = jnp.linspace(0.5, 2.0, group.size)
  folded = surgery.fold_scale(variables['params'], group, s)
  bn = variables['params']['stage1_block0']['bn1']
  np.testing.assert_allclose(folded['stage1_block0']['bn1']['scale'], bn['scale'] * s)
  np.testing.assert_allclose(folded['stage1_block0']['bn1']['bias'], bn['bias'] * s)


def test_plan_refuses_bad_masks():
  _, variables, _, graph = _setup('resnet8')
  name = 'stage1_block0/conv1'
  with pytest.raises(ValueError, match='no channel'):
    surgery.plan(graph, {name: np.zeros(16, bool)}, variables)
  with pytest.raises(ValueError, match='shape'):
    surgery.plan(graph, {name: np.ones(5, bool)}, variables)
  stream = next(g for g in graph.groups if not g.prunable)
  mask = np.ones(stream.size, bool)
  mask[0] = False
  with pytest.raises(ValueError, match='cannot lose channels'):
    surgery.plan(graph, {stream.name: mask}, variables)


class _BiasConvNet(nn.Module):
  """A conv with bias and no norm (a kernel site), then conv + batch norm (a norm site)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.relu(nn.BatchNorm(not train)(nn.Conv(8, (3, 3), use_bias=False)(x)))
    return nn.Dense(3)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize('binary', [False, True])
def test_folded_pruning_layers_equal_intercepted_ones(binary):
  """Values and gradients (params, scales) of the driver's folded forward, train mode."""
  model = _BiasConvNet()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = model.init(jax.random.key(1), x)
  graph = trace_channel_graph(lambda v, x: model.apply(v, x), variables, x)
  names = [g.name for g in graph.prunable()]
  assert len(names) == 2 and all(surgery.foldable(variables['params'], graph.group(n))
                                 for n in names)
  masks, scales = _random_pruning(graph, names, seed=3)
  masks = {n: jnp.asarray(m, jnp.float32) for n, m in masks.items()} if binary else None

  def intercepted(params, scales):
    site = lambda t: {s: t[n] for n in names for s in graph.group(n).sites}
    with layer.pruning_layers(site(scales), masks and site(masks)):
      out, _ = model.apply({**variables, 'params': params}, x, train=True,
                           mutable=['batch_stats'])
    return jnp.sum(jnp.sin(out))

  def folded(params, scales):
    forward = surgery.fold_scales(params, graph, scales, masks)
    out, _ = model.apply({**variables, 'params': forward}, x, train=True,
                         mutable=['batch_stats'])
    return jnp.sum(jnp.sin(out))

  expected = jax.value_and_grad(intercepted, argnums=(0, 1))(variables['params'], scales)
  actual = jax.value_and_grad(folded, argnums=(0, 1))(variables['params'], scales)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               actual, expected)
  if binary:  # Pruned channels' scales get no gradient.
    for n in names:
      assert np.all(np.asarray(actual[1][1][n])[np.asarray(masks[n]) == 0] == 0)


def test_fold_scales_names_a_site_it_cannot_fold():
  model = _BiasConvNet()
  x = jnp.ones((1, 6, 6, 3))
  variables = model.init(jax.random.key(1), x)
  graph = trace_channel_graph(lambda v, x: model.apply(v, x), variables, x)
  group = graph.prunable()[1]
  params = jax.tree.map(lambda v: v, variables['params'])
  del params[group.sites[0]]['scale']
  assert not surgery.foldable(params, group)
  with pytest.raises(ValueError, match=group.sites[0]):
    surgery.fold_scales(params, graph, {group.name: jnp.ones(group.size)})
  del params[group.sites[0]]  # A norm without parameters at all.
  assert not surgery.foldable(params, group)
