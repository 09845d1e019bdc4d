"""Issue 22: grouped convs, modules built in `__call__`, transforms and attention heads.

Masked vs compact equality for random unit sets, and CCI through `spec_for`, run for
these models in test_foreign_models (its CASES include them); here: the structure the
graph finds, hand-checked slices, refusals by name, and a training step of the compact
models.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import c2s2
from tests.foreign import test_foreign_models as foreign
from tests.foreign import zoo_models

ZOO = {case.name: case for case in foreign.CASES if case.model.__module__ ==
       zoo_models.__name__}


def graph_of(model, x=None):
  """The graph of `model` traced from shape structs (no compilation)."""
  x = jnp.zeros((2, 8, 8, 3)) if x is None else x
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return c2s2.trace_channel_graph(model.apply, variables, x), variables


def coupling(group, path, axis):
  """The coupling of `group` on `path`'s `axis` (exactly one)."""
  keys = tuple(path.split('/'))
  found = [c for c in group.couplings if c.path == keys and c.axis == axis]
  assert len(found) == 1, (path, axis, group.couplings)
  return found[0]


# ------------------------------------------------------------------ grouped convs


def test_a_grouped_conv_prunes_the_same_positions_in_every_conv_group():
  variables, _, graph = foreign.setup(ZOO['grouped_resnext'])
  params = variables['params']['ResNeXtBlock_0']
  into, out = (graph.group(f'ResNeXtBlock_0/Conv_{i}') for i in (0, 1))
  for group in (into, out):  # 128 channels in 32 conv groups: 4 positions each
    assert group.prunable, group.reason
    assert (group.size, group.unit, group.site_widths) == (4, 1, (128,))
  c = coupling(into, 'ResNeXtBlock_0/Conv_0/kernel', 3)
  assert (c.stride, c.copies) == (4, 32)
  c = coupling(into, 'ResNeXtBlock_0/Conv_1/kernel', 2)  # the grouped kernel's c_in / 32
  assert (c.stride, c.copies) == (0, 1)
  assert coupling(out, 'ResNeXtBlock_0/Conv_2/kernel', 2).copies == 32
  keep_in, keep_out = np.array([True, False, True, False]), np.array([False, True, True,
                                                                      True])
  removal = c2s2.plan(graph, {into.name: keep_in, out.name: keep_out}, variables)
  sliced = c2s2.slice_variables(variables, removal)['params']['ResNeXtBlock_0']
  columns = (np.arange(32)[:, None] * 4 + np.array([1, 2, 3])).reshape(-1)
  np.testing.assert_array_equal(  # per conv group: input positions 0, 2; outputs 1-3
      sliced['Conv_1']['kernel'], params['Conv_1']['kernel'][:, :, [0, 2]][..., columns])
  assert sliced['Conv_0']['kernel'].shape == (1, 1, 16, 64)
  assert sliced['Conv_2']['kernel'].shape == (1, 1, 96, 16)


class TwoGroupings(nn.Module):
  """One space read by convs of 4 and of 8 conv groups, one by a grouped conv after a
  concatenation."""

  @nn.compact
  def __call__(self, x):
    a = nn.Conv(16, (1, 1), name='shared')(x)
    b = nn.Conv(8, (1, 1), name='concatenated')(x)
    y = (nn.Conv(16, (3, 3), feature_group_count=4, name='groups_4')(a)
         + nn.Conv(16, (3, 3), feature_group_count=8, name='groups_8')(a)
         + nn.Conv(16, (3, 3), feature_group_count=2, name='after_concat')(
             jnp.concatenate([b, b], axis=-1)))
    return nn.Dense(10, name='head')(y.mean(axis=(1, 2)))


def test_grouped_convs_that_disagree_are_refused_by_name():
  graph, variables = graph_of(TwoGroupings())
  shared = graph.group('shared')
  assert not shared.prunable
  assert 'tied into units by both groups_4 (feature_group_count=4) and groups_8 (' in (
      shared.reason)
  assert 'grouped conv after_concat (feature_group_count=2) reads concatenated' in (
      graph.group('concatenated').reason)
  joined = graph.group('groups_4')  # 4, 2 and 8 positions per conv group: refused
  assert 'joined with channels tied into units by groups_8' in (
      joined.reason)
  with pytest.raises(ValueError, match='shared cannot lose channels: .*groups_8'):
    c2s2.plan(graph, {'shared': np.arange(4) < 2}, variables)  # in units


# ------------------------------------------------------------------ factories, transforms


def test_modules_built_in_call_and_shared_or_rematerialised_blocks_are_traced():
  _, _, graph = foreign.setup(ZOO['factory_share_scope_remat'])
  stream = graph.group('stem')
  assert stream.prunable and stream.joined, stream.reason
  assert stream.producers == ('stem', 'plain/conv', 'shared/conv',
                              'shared/Squeeze_0/Dense_0', 'remat/conv',
                              'remat/Squeeze_0/Dense_0')
  assert [g.name for g in graph.prunable()] == [
      'stem', 'shared/Squeeze_0/Dense_1', 'remat/Squeeze_0/Dense_1']


@pytest.mark.parametrize('model, reason', [
    (zoo_models.ScannedNet(),
     'unsupported primitive in blocks/FactoryBlock_0/conv (scan)'),
    (zoo_models.EnsembleNet(), 'dot_general not contracting channels with a parameter '
     'kernel in ensemble (dot_general)')])
def test_scanned_and_vmapped_modules_are_refused_by_name(model, reason):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = jax.jit(model.init, compiler_options=foreign.FAST_COMPILE)(
      jax.random.key(1), x)
  graph = c2s2.trace_channel_graph(model.apply, variables, x)
  assert graph.group('stem').reason == reason
  assert not graph.prunable()
  with pytest.raises(ValueError, match='stem cannot lose channels: '):
    c2s2.plan(graph, {'stem': np.arange(8) < 4}, variables)

  @functools.partial(jax.jit, compiler_options=foreign.FAST_COMPILE)
  def outputs(variables):
    with c2s2.pruning_layers({'stem': jnp.full(8, 2.0)}):  # no crash inside transforms
      doubled = model.apply(variables, x)
    return doubled, model.apply(variables, x)

  doubled, plain = outputs(variables)
  assert not np.allclose(doubled, plain)


# ------------------------------------------------------------------ attention heads


@pytest.mark.parametrize('layout', ['fused', 'separate'])
def test_attention_heads_are_units_of_q_k_v_and_the_output_projection(layout):
  variables, _, graph = foreign.setup(ZOO[f'vit_{layout}_qkv'])
  fused = layout == 'fused'
  projections = ('attn/qkv',) if fused else ('attn/q', 'attn/k', 'attn/v')
  heads = graph.group(projections[0])
  assert heads.prunable, heads.reason
  assert (heads.size, heads.unit, heads.producers) == (3, 4, projections)
  assert heads.site_widths == ((36,) if fused else (12, 12, 12))
  assert graph.group('fc1').prunable  # the MLP hidden width
  assert 'reduction over channels in norm1' in graph.group('embed').reason
  removal = c2s2.plan(graph, {heads.name: np.array([True, False, True])}, variables)
  sliced = c2s2.slice_variables(variables, removal)['params']
  kept = np.r_[0:4, 8:12]  # heads 0 and 2 of 4 channels
  np.testing.assert_array_equal(sliced['attn']['proj']['kernel'],
                                variables['params']['attn']['proj']['kernel'][kept])
  columns = np.r_[kept, 12 + kept, 24 + kept] if fused else kept
  projection = 'qkv' if fused else 'v'
  np.testing.assert_array_equal(
      sliced['attn'][projection]['kernel'],
      variables['params']['attn'][projection]['kernel'][:, columns])


def test_flax_multi_head_attention_heads_are_units():
  variables, _, graph = foreign.setup(ZOO['vit_flax_attention'])
  heads = graph.group('attn/query')
  assert heads.prunable, heads.reason
  assert (heads.size, heads.unit) == (3, 4)
  assert heads.producers == ('attn/query', 'attn/key', 'attn/value')
  assert heads.site_widths == (12, 12, 12)
  removal = c2s2.plan(graph, {heads.name: np.array([False, True, True])}, variables)
  sliced = c2s2.slice_variables(variables, removal)['params']['attn']
  params = variables['params']['attn']
  np.testing.assert_array_equal(sliced['out']['kernel'], params['out']['kernel'][1:])
  np.testing.assert_array_equal(sliced['value']['kernel'],
                                params['value']['kernel'][:, 1:])
  np.testing.assert_array_equal(sliced['query']['bias'], params['query']['bias'][1:])


def test_a_hard_coded_head_count_is_refused_by_name():
  model = zoo_models.ViT('fused', fixed_heads=3)
  x = jnp.zeros((2, 8, 8, 3))
  variables = jax.jit(model.init, compiler_options=foreign.FAST_COMPILE)(
      jax.random.key(0), x)
  graph = c2s2.trace_channel_graph(model.apply, variables, x)
  removal = c2s2.plan(graph, {'attn/qkv': np.array([True, False, True])}, variables)
  with pytest.raises(c2s2.CompactApplyError, match=r'(?s)attn \(Attention\).*reshape'):
    jax.eval_shape(c2s2.compact_apply(model), c2s2.slice_variables(variables, removal), x)


def test_a_channel_shuffle_stays_a_channel_mixing_reshape():
  """A split that is not attention (ShuffleNet) keeps its channels and its reason."""
  graph, _ = graph_of(foreign.ChannelShuffle())
  group = graph.group('before_shuffle')
  assert (group.size, group.unit, group.prunable) == (8, 1, False)
  assert 'reshape mixing channels after before_shuffle (reshape)' in group.reason


# ------------------------------------------------------------------ compact training


@pytest.mark.parametrize('name', sorted(ZOO))
def test_the_compact_model_trains_a_step(name):
  case = ZOO[name]
  variables, x, graph = foreign.setup(case)
  masks = {g.name: np.arange(g.size) % 2 == 0 for g in graph.prunable()}
  ones = {n: jnp.ones(m.size) for n, m in masks.items()}
  sliced = foreign.compact(graph, variables, masks, ones)
  apply = c2s2.compact_apply(case.model)
  labels = jnp.arange(x.shape[0]) % 10

  @functools.partial(jax.jit, compiler_options=foreign.FAST_COMPILE)
  def loss_and_step(params):
    def loss(p):
      out = case.apply({**sliced, 'params': p}, x, train=True, apply=apply)
      logits = out[0] if isinstance(out, tuple) else out
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads), grads

  before, params, grads = loss_and_step(sliced['params'])
  after, _, _ = loss_and_step(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(after) < float(before)


class GroupNormNet(nn.Module):
  """A group norm without bias: its reshape splits channels like heads, but its groups
  cannot be removed (the compact model would regroup the channels)."""

  @nn.compact
  def __call__(self, x):
    x = nn.GroupNorm(num_groups=4, use_bias=False, name='norm')(nn.Conv(16, (3, 3),
                                                                        name='conv')(x))
    return nn.Dense(10, name='head')(x.mean(axis=(1, 2)))


def test_a_group_norm_split_is_not_taken_for_heads():
  group = graph_of(GroupNormNet())[0].group('conv')
  assert (group.size, group.unit, group.prunable) == (16, 1, False)
  assert 'reshape mixing channels in norm (reshape)' in group.reason
