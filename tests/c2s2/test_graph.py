"""The channel graph traced from jaxprs: the project's models, tiny models written in
several styles, and the masking equivalence that checks couplings and sites."""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2s2.graph import ChannelGraph, Coupling, trace_channel_graph
from train import models
from train.models import vgg


def init(model: nn.Module, size: int, **kwargs):
  """Random variables (batch statistics too) and a (2, size, size, 3) input."""
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  variables = model.init(jax.random.key(0), x, **kwargs)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  noisy = []
  for (path, leaf), key in zip(leaves, keys):
    if str(path[-1].key) == 'var':
      noisy.append(jax.random.uniform(key, leaf.shape, minval=0.5, maxval=1.5))
    else:
      noisy.append(leaf + 0.3 * jax.random.normal(key, leaf.shape))
  return jax.tree_util.tree_unflatten(treedef, noisy), x


def abstract_graph(model: nn.Module, size: int, **kwargs) -> ChannelGraph:
  """The graph traced from shape structs only, for a (1, size, size, 3) input."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros(x.shape), **kwargs))
  return trace_channel_graph(lambda v, inputs: model.apply(v, inputs, **kwargs),
                             variables, x)


def trace(model: nn.Module, variables, x, **kwargs) -> ChannelGraph:
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  return trace_channel_graph(lambda v, inputs: model.apply(v, inputs, **kwargs),
                             abstract, jax.ShapeDtypeStruct(x.shape, x.dtype))


def leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def is_consumer(coupling: Coupling, variables) -> bool:
  """A conv or dense kernel's input axis (the depth-wise input axis has size 1)."""
  shape = leaf(variables[coupling.collection], coupling.path).shape
  return (coupling.path[-1] == 'kernel' and coupling.axis == len(shape) - 2
          and shape[-2] > 1)


def entries(variables, pruned, keep=lambda c: True):
  """Bool trees of the variables: True at the coupled entries of the pruned channels."""
  marked = jax.tree.map(lambda a: np.zeros(a.shape, bool), variables)
  for group, channels in pruned:
    for c in filter(keep, group.couplings):
      array = leaf(marked[c.collection], c.path)
      index = [slice(None)] * array.ndim
      index[c.axis] = c.indices(channels, array.shape[c.axis])
      array[tuple(index)] = True
  return marked


def zeroed(variables, pruned, consumers: bool):
  """Variables with the params of either the consumer or the producer side of every
  pruned channel set to 0 (batch statistics are kept)."""
  side = entries(variables, pruned, lambda c: c.collection == 'params'
                 and is_consumer(c, variables) == consumers)
  return jax.tree.map(lambda a, zero: np.where(zero, 0, a), variables, side)


def masked(pruned, inputs: dict):
  """Multiplies each site's output by its group's mask; records every call's input."""
  masks = {}
  for group, channels in pruned:
    mask = np.ones(group.size, np.float32)
    mask[channels] = 0
    masks.update({site: group.expand(mask, width)
                  for site, width in zip(group.sites, group.site_widths)})

  def intercept(next_fun, args, call_kwargs, context):
    if context.method_name != '__call__':
      return next_fun(*args, **call_kwargs)
    path = '/'.join(context.module.path)
    inputs.setdefault(path, []).append(args[0])
    out = next_fun(*args, **call_kwargs)
    return out * masks[path] if path in masks else out

  return nn.intercept_methods(intercept)


def leaky(x):
  return jnp.maximum(x, 0.1 * x)


def average_pool_2x2(x, layer):
  del layer
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def dead(model, variables, x, pruned, **kwargs):
  """Bool trees: the variable entries the logits do not depend on (gradient 0).

  Nothing may be dead by chance, so ReLUs are leaky and max pools average here (the
  graph is the same for any activation that keeps 0 at 0 and any pooling over space):
  no unit is off, and no max routes the gradient away from a position.
  """
  def loss(v):
    with masked(pruned, {}):
      logits = model.apply(v, x, **kwargs)
    return jnp.sum(logits * jax.random.normal(jax.random.key(3), logits.shape))

  with (mock.patch.object(nn, 'relu', leaky), mock.patch.object(nn, 'relu6', leaky),
        mock.patch.object(nn, 'max_pool', nn.avg_pool),
        mock.patch.object(vgg, 'max_pool_2x2', average_pool_2x2)):
    grads = jax.grad(loss)(variables)
  return jax.tree.map(lambda g: np.asarray(g) == 0, grads)


def check_masking(model, variables, x, groups, seed=0, **kwargs):
  """Masks random channels of `groups` at their sites and checks that:

  - they are zero at the input of every consumer;
  - the logits equal those of the unmasked model with either their consumer-side or
    their producer-side params zeroed;
  - the variable entries the masking makes dead (zero gradient) are exactly the coupled
    entries: nothing to slice is missing and nothing live is coupled.
  """
  rng = np.random.default_rng(seed)
  pruned = [(g, rng.choice(g.size, rng.integers(1, g.size), replace=False))
            for g in groups]
  inputs = {}
  with masked(pruned, inputs):
    logits = model.apply(variables, x, **kwargs)
  for group, channels in pruned:
    for c in filter(lambda c: is_consumer(c, variables), group.couplings):
      for value in inputs['/'.join(c.path[:-1])]:
        index = c.indices(channels, value.shape[-1])
        np.testing.assert_array_equal(np.asarray(value)[..., index], 0, err_msg=(
            f'{group.name}: pruned channels reach {c.path}'))
  scale = float(np.max(np.abs(logits)))
  for consumers in (True, False):
    expected = model.apply(zeroed(variables, pruned, consumers), x, **kwargs)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=(
        f'{[g.name for g, _ in pruned]} consumers={consumers}'))
  trees = (dead(model, variables, x, pruned, **kwargs),
           dead(model, variables, x, [], **kwargs), entries(variables, pruned))
  for (path, masked_dead), (_, dead_anyway), (_, coupled_entries) in zip(
      *map(jax.tree_util.tree_leaves_with_path, trees)):
    np.testing.assert_array_equal(masked_dead | coupled_entries, masked_dead,
                                  err_msg=f'coupled but live: {path}')
    np.testing.assert_array_equal(masked_dead & ~dead_anyway & ~coupled_entries, False,
                                  err_msg=f'dead but not coupled: {path}')


def coupled(group, collection, path, axis, offset=0, period=0, **units):
  return Coupling(collection, tuple(path.split('/')), axis, offset, period, **units) in \
      group.couplings


# ------------------------------------------------------------------ the project's models


@pytest.mark.parametrize('shortcut', ['A', 'B'])
def test_resnet20_block_groups(shortcut):
  model = models.build_model('resnet20', 10, shortcut=shortcut)
  graph = abstract_graph(model, 8, train=False)
  for stage in (1, 2, 3):
    for block in (0, 1, 2):
      prefix = f'stage{stage}_block{block}'
      group = graph.group(f'{prefix}/conv1')
      assert group.prunable and not group.joined, group.reason
      assert group.sites == (f'{prefix}/bn1',)
      assert set(group.couplings) == {
          Coupling('params', (prefix, 'conv1', 'kernel'), 3),
          Coupling('params', (prefix, 'bn1', 'scale'), 0),
          Coupling('params', (prefix, 'bn1', 'bias'), 0),
          Coupling('batch_stats', (prefix, 'bn1', 'mean'), 0),
          Coupling('batch_stats', (prefix, 'bn1', 'var'), 0),
          Coupling('params', (prefix, 'conv2', 'kernel'), 2)}
  assert not graph.group('head').prunable
  assert graph.group('head').reason == 'model output (head)'


def test_resnet20_zero_pad_shortcut_makes_streams_unprunable():
  model = models.build_model('resnet20', 10)
  graph = abstract_graph(model, 8, train=False)
  streams = [graph.group(name) for name in
             ('stem_conv', 'stage2_block0/conv2', 'stage3_block0/conv2')]
  for group in streams:
    assert not group.prunable and 'pad' in group.reason, group.reason
  assert 'channel axis padded in stage2_block0 (pad)' in streams[0].reason
  assert len(graph.prunable()) == 9


def test_resnet20_projection_shortcut_streams_are_joined_groups():
  model = models.build_model('resnet20', 10, shortcut='B')
  graph = abstract_graph(model, 8, train=False)
  stems = {1: 'stem', 2: 'stage2_block0/shortcut', 3: 'stage3_block0/shortcut'}
  first = {1: 'stem_conv', 2: 'stage2_block0/conv2', 3: 'stage3_block0/conv2'}
  for stage in (1, 2, 3):
    group = graph.group(first[stage])
    assert group.prunable and group.joined, group.reason
    blocks = [f'stage{stage}_block{b}' for b in range(3)]
    assert set(group.producers) == {f'{stems[stage]}_conv', *(f'{b}/conv2' for b in blocks)}
    assert set(group.sites) == {f'{stems[stage]}_bn', *(f'{b}/bn2' for b in blocks)}
    consumers = {'/'.join(c.path[:-1]) for c in group.couplings
                 if c.path[-1] == 'kernel' and c.axis in (0, 2)}
    # Block 0 of stages 2 and 3 reads the previous stage's stream.
    expected = {f'{b}/conv1' for b in blocks[stage > 1:]}
    if stage < 3:
      expected |= {f'stage{stage + 1}_block0/conv1', f'stage{stage + 1}_block0/shortcut_conv'}
    else:
      expected |= {'head'}
    assert consumers == expected
  assert coupled(graph.group('stage3_block0/conv2'), 'params', 'head/kernel', 0)


@pytest.mark.slow  # Per group, compiled once each; all groups at once run by default.
@pytest.mark.parametrize('shortcut', ['A', 'B'])
def test_resnet8_masking_equivalence_per_group(shortcut):
  model = models.build_model('resnet8', 10, shortcut=shortcut)
  variables, x = init(model, 8, train=False)
  graph = trace(model, variables, x, train=False)
  for group in graph.prunable():
    check_masking(model, variables, x, [group], train=False)


def test_resnet20_masking_equivalence_all_groups():
  model = models.build_model('resnet20', 10, shortcut='B')
  variables, x = init(model, 8, train=False)
  graph = trace(model, variables, x, train=False)
  check_masking(model, variables, x, graph.prunable(), train=False)


def test_vgg16_every_conv_prunable_and_masking_equivalence():
  widths = {f'conv{i}': 4 for i in range(13)}
  # The graph reads plain convs: trace with conv_impl='xla' (as the driver does); the
  # CPU's patches path for the last block is refused by name (below).
  model = models.build_model('vgg16', 10, widths=widths, conv_impl='xla')
  patches = trace(models.build_model('vgg16', 10, widths=widths, conv_impl='patches'),
                  *init(model, 32, train=False), train=False)
  assert not patches.prunable()
  assert all('without a parameter kernel' in g.reason or g.name == 'head'
             for g in patches.groups)
  variables, x = init(model, 32, train=False)
  graph = trace(model, variables, x, train=False)
  assert [g.name for g in graph.prunable()] == [f'conv{i}' for i in range(13)]
  assert graph.group('conv5').sites == ('bn5',)
  assert coupled(graph.group('conv12'), 'params', 'head/kernel', 0)
  check_masking(model, variables, x, graph.prunable(), train=False)


def test_resnet50_bottleneck_groups():
  graph = abstract_graph(models.build_model('resnet50', 1000), 32, train=False)
  for stage, blocks in enumerate((3, 4, 6, 3), start=1):
    for block in range(blocks):
      for conv in (1, 2):
        group = graph.group(f'stage{stage}_block{block}/conv{conv}')
        assert group.prunable and group.sites == (f'stage{stage}_block{block}/bn{conv}',)
        assert coupled(group, 'params', f'stage{stage}_block{block}/conv{conv + 1}/kernel',
                       2)
  assert len(graph.groups) == 1 + 16 * 2 + 4 + 1


@pytest.mark.slow  # Bottleneck surgery equivalence runs by default in test_surgery.
def test_resnet50_masking_equivalence_slim():
  widths = {key: 4 for key in models.default_widths('resnet50')}
  model = models.build_model('resnet50', 10, widths=widths)
  variables, x = init(model, 32, train=False)
  graph = trace(model, variables, x, train=False)
  check_masking(model, variables, x, graph.prunable(), train=False)


def test_train_mode_gives_the_same_graph():
  model = models.build_model('resnet8', 10, shortcut='B')
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros(x.shape), train=False))
  train = trace_channel_graph(
      lambda v, inputs: model.apply(v, inputs, train=True, mutable=['batch_stats'])[0],
      variables, x)
  evaluation = abstract_graph(model, 8, train=False)
  assert [(g.name, g.sites, set(g.couplings), g.prunable) for g in train.groups] == [
      (g.name, g.sites, set(g.couplings), g.prunable) for g in evaluation.groups]


# ------------------------------------------------------------------ tiny models


class CompactNet(nn.Module):
  """@nn.compact; a conv with bias and no norm; mean-pool into a dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(6, (3, 3), use_bias=False, name='conv0')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='bn0')(x))
    x = nn.relu(nn.Conv(5, (3, 3), name='conv1')(x))
    return nn.Dense(3, name='head')(x.mean(axis=(1, 2)))


class SetupResidual(nn.Module):
  """setup-style; an identity residual add and a projected one."""
  project: bool

  def setup(self):
    self.stem = nn.Conv(6, (3, 3), use_bias=False)
    self.stem_bn = nn.BatchNorm(use_running_average=True)
    self.conv = nn.Conv(8 if self.project else 6, (3, 3), use_bias=False)
    self.bn = nn.BatchNorm(use_running_average=True)
    if self.project:
      self.proj = nn.Conv(8, (1, 1))
    self.head = nn.Dense(3)

  def __call__(self, x):
    x = nn.relu(self.stem_bn(self.stem(x)))
    shortcut = self.proj(x) if self.project else x
    x = nn.relu(self.bn(self.conv(x)) + shortcut)
    return self.head(jnp.mean(x, axis=(1, 2)))


def flatten(x):
  return x.reshape(x.shape[0], -1)


SEQUENTIAL = nn.Sequential([nn.Conv(6, (3, 3)), nn.relu, nn.Conv(4, (3, 3), strides=2),
                            nn.tanh, flatten, nn.Dense(3)])


class Concat(nn.Module):
  """Concatenations into a conv (offsets) and a flatten into a dense (periods)."""

  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Conv(4, (3, 3), name='a')(x))
    b = nn.relu(nn.Conv(5, (1, 1), name='b')(x))
    c = nn.relu(nn.Conv(3, (3, 3), strides=2, name='c')(jnp.concatenate([a, b], -1)))
    pooled = nn.avg_pool(jnp.concatenate([a, b], -1), (2, 2), strides=(2, 2))
    return nn.Dense(2, name='head')(flatten(jnp.concatenate([c, pooled], -1)))


class DepthWise(nn.Module):
  """conv -> bn -> depth-wise conv -> bn -> point-wise conv."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(True, name='bn0')(nn.Conv(6, (1, 1), name='conv0')(x)))
    x = nn.Conv(6, (3, 3), feature_group_count=6, use_bias=False, name='dw')(x)
    x = nn.relu6(nn.BatchNorm(True, name='dw_bn')(x))
    x = nn.Conv(4, (1, 1), name='pw')(x)
    return nn.Dense(2, name='head')(x.mean(axis=(1, 2)))


class Unsupported(nn.Module):
  """A channel shuffle, a transpose to NCHW, and a grouped conv."""

  @nn.compact
  def __call__(self, x):
    n, h, w, _ = x.shape
    s = nn.relu(nn.Conv(8, (3, 3), name='shuffled')(x))
    s = s.reshape(n, h, w, 2, 4).swapaxes(-1, -2).reshape(n, h, w, 8)
    t = nn.Conv(8, (3, 3), name='transposed')(x)
    g = nn.Conv(8, (3, 3), feature_group_count=2, name='grouped')(s)
    k = nn.Conv(8, (3, 3), name='kept')(x)
    y = jnp.transpose(t, (0, 3, 1, 2)).mean(axis=(2, 3))
    features = [y, g.mean(axis=(1, 2)), k.max(axis=(1, 2))]
    return nn.Dense(2, name='head')(jnp.concatenate(features, -1))


def test_compact_conv_with_bias_and_no_norm_is_its_own_site():
  model = CompactNet()
  variables, x = init(model, 6)
  graph = trace(model, variables, x)
  assert graph.group('conv0').sites == ('bn0',)
  group = graph.group('conv1')
  assert group.prunable and group.sites == ('conv1',)
  assert coupled(group, 'params', 'conv1/bias', 0)
  assert coupled(group, 'params', 'head/kernel', 0)
  for group in graph.prunable():
    check_masking(model, variables, x, [group])


@pytest.mark.parametrize('project', [False, True])
def test_setup_residual_add_joins_the_spaces(project):
  model = SetupResidual(project)
  variables, x = init(model, 6)
  graph = trace(model, variables, x)
  names = [g.name for g in graph.prunable()]
  if project:  # proj runs before conv
    assert names == ['stem', 'proj']
    stream = graph.group('proj')
    assert stream.producers == ('proj', 'conv') and stream.sites == ('proj', 'bn')
  else:
    assert names == ['stem']
    stream = graph.group('stem')
    assert stream.producers == ('stem', 'conv') and stream.sites == ('stem_bn', 'bn')
  assert stream.joined and coupled(stream, 'params', 'head/kernel', 0)
  for group in graph.prunable():
    check_masking(model, variables, x, [group])


def test_sequential_flatten_into_dense_has_a_period():
  variables, x = init(SEQUENTIAL, 6)
  graph = trace(SEQUENTIAL, variables, x)
  assert [g.name for g in graph.groups] == ['layers_0', 'layers_2', 'layers_5']
  group = graph.group('layers_2')
  assert group.sites == ('layers_2',)
  assert coupled(group, 'params', 'layers_5/kernel', 0, period=4)
  for group in graph.prunable():
    check_masking(SEQUENTIAL, variables, x, [group])


class Shared(nn.Module):
  """One conv called twice: its kernel ties both outputs into one space."""

  @nn.compact
  def __call__(self, x):
    conv = nn.Conv(4, (3, 3), name='shared')
    a, b = nn.relu(conv(x)), nn.relu(conv(x[:, ::-1]))
    return nn.Dense(2, name='head')(jnp.concatenate([a, b], -1).mean(axis=(1, 2)))


def test_module_called_twice_is_one_group():
  model = Shared()
  variables, x = init(model, 6)
  graph = trace(model, variables, x)
  assert [g.name for g in graph.groups] == ['shared', 'head']
  group = graph.group('shared')
  assert group.prunable and not group.joined
  assert coupled(group, 'params', 'head/kernel', 0, offset=0)
  assert coupled(group, 'params', 'head/kernel', 0, offset=4)
  check_masking(model, variables, x, [group])


def test_concatenation_offsets():
  model = Concat()
  variables, x = init(model, 6)
  graph = trace(model, variables, x)
  a, b, c = (graph.group(name) for name in 'abc')
  assert coupled(a, 'params', 'c/kernel', 2, offset=0)
  assert coupled(b, 'params', 'c/kernel', 2, offset=4)
  assert coupled(c, 'params', 'head/kernel', 0, offset=0, period=12)
  assert coupled(a, 'params', 'head/kernel', 0, offset=3, period=12)
  assert coupled(b, 'params', 'head/kernel', 0, offset=7, period=12)
  assert [g.name for g in graph.prunable()] == ['a', 'b', 'c']
  for group in graph.prunable():
    check_masking(model, variables, x, [group])
  check_masking(model, variables, x, graph.prunable(), seed=1)


def test_depth_wise_conv_passes_the_space_through():
  model = DepthWise()
  variables, x = init(model, 6)
  graph = trace(model, variables, x)
  group = graph.group('conv0')
  assert group.prunable and not group.joined and group.producers == ('conv0',)
  assert group.sites == ('bn0', 'dw_bn')
  assert coupled(group, 'params', 'dw/kernel', 3)
  assert coupled(group, 'batch_stats', 'dw_bn/mean', 0)
  assert coupled(group, 'params', 'pw/kernel', 2)
  assert [g.name for g in graph.groups] == ['conv0', 'pw', 'head']
  for group in graph.prunable():
    check_masking(model, variables, x, [group])


def test_unsupported_patterns_are_not_prunable_with_a_reason():
  model = Unsupported()
  variables, x = init(model, 4)
  graph = trace(model, variables, x)
  assert 'reshape mixing channels after shuffled (reshape)' in graph.group(
      'shuffled').reason
  assert 'transpose moving channels' in graph.group('transposed').reason
  grouped = graph.group('grouped')  # pruned by position in each conv group
  assert (grouped.size, grouped.site_widths) == (4, (8,))
  assert coupled(grouped, 'params', 'head/kernel', 0, offset=8, stride=4, copies=2)
  assert [g.name for g in graph.prunable()] == ['grouped', 'kept']
  check_masking(model, variables, x, graph.prunable())


def test_model_output_and_unknown_primitive():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.Conv(4, (3, 3), name='sorted')(x)
      return nn.Conv(3, (3, 3), name='out')(jnp.sort(y, axis=-1))

  model = Net()
  graph = trace(model, *init(model, 4))
  assert graph.group('out').reason == 'model output (out)'
  assert 'unsupported primitive after sorted (sort)' in graph.group('sorted').reason
  assert not graph.prunable()


def test_site_missing_before_a_consumer_is_not_prunable():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.Conv(4, (3, 3), name='conv')(x)
      z = nn.Conv(4, (1, 1), name='early')(y)
      y = nn.BatchNorm(True, name='bn')(y)
      y = nn.sigmoid(y)
      return nn.Dense(2, name='head')((y + z).mean(axis=(1, 2)))

  model = Net()
  graph = trace(model, *init(model, 4))
  reason = graph.group('conv').reason
  assert 'output of conv reaches early without passing bn' in reason
  assert 'masked channels not zero at head: logistic maps 0 to nonzero' in reason
  assert graph.group('conv').producers == ('conv', 'early')


# ------------------------------------------------------------------ small pieces


def test_coupling_indices_with_offset_and_period():
  assert Coupling('params', ('k',), 0, offset=2).indices([1, 0], 8).tolist() == [2, 3]
  flat = Coupling('params', ('k',), 0, offset=1, period=4)
  assert flat.indices([0, 2], 12).tolist() == [1, 3, 5, 7, 9, 11]
  with pytest.raises(ValueError, match='beyond'):
    Coupling('params', ('k',), 0, offset=2).indices([6], 8)


def test_group_lookup_lists_valid_names():
  graph = trace(CompactNet(), *init(CompactNet(), 4))
  with pytest.raises(KeyError, match="conv0.*conv1.*head"):
    graph.group('conv2')


def test_static_keyword_and_array_arguments():
  model = CompactNet()
  variables, x = init(model, 4)
  graph = trace_channel_graph(lambda v, inputs, scale: model.apply(v, inputs * scale),
                              variables, x, scale=2.0)
  assert [g.name for g in graph.prunable()] == ['conv0', 'conv1']
