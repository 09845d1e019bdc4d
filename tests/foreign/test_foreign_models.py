"""CCI and C2S2 on models this project did not write (issue 8).

The models below are written the way Flax users write them (hard-coded widths,
`@nn.compact` and `setup` modules, `nn.Sequential`, auto-named layers) and are never
edited: CCI enters through the optax wrapper, C2S2 through interception, and the
compact model runs through `c2s2.compact_apply`.
"""

import dataclasses
import functools

import flax
import flax.linen as nn
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import c2s2
import cci
from tests import markdown_docs
from tests.foreign import zoo_models

# ------------------------------------------------------------------ the models


class PlainNet(nn.Module):
  """@nn.compact VGG style: conv-bn-relu-pool twice, flatten into dense layers."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in (8, 12):
      x = nn.Conv(width, (3, 3), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(10)(x)


class SetupResidual(nn.Module):
  """setup style: a stem and one block added to it without a projection."""

  def setup(self):
    self.stem = nn.Conv(8, (3, 3), use_bias=False)
    self.stem_norm = nn.BatchNorm()
    self.conv_a = nn.Conv(8, (3, 3), use_bias=False)
    self.norm_a = nn.BatchNorm()
    self.conv_b = nn.Conv(8, (3, 3), use_bias=False)
    self.norm_b = nn.BatchNorm()
    self.head = nn.Dense(10)

  def __call__(self, x, train: bool = False):
    run = not train
    x = nn.relu(self.stem_norm(self.stem(x), use_running_average=run))
    y = nn.relu(self.norm_a(self.conv_a(x), use_running_average=run))
    x = nn.relu(x + self.norm_b(self.conv_b(y), use_running_average=run))
    return self.head(x.mean(axis=(1, 2)))


SEQUENTIAL = nn.Sequential([
    nn.Conv(8, (3, 3)), nn.relu, nn.Conv(16, (3, 3), strides=2), nn.relu,
    lambda x: jnp.mean(x, axis=(1, 2)), nn.Dense(12), nn.relu, nn.Dense(10)])


class BasicBlock(nn.Module):
  """ResNet basic block; a strided 1x1 projection when the shape changes."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(y))
    if x.shape != y.shape:  # as flax's examples/imagenet ResNet decides
      x = norm()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class ProjectedResNet(nn.Module):
  """A stem, an identity block and a projected block."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(not train)(nn.Conv(8, (3, 3), use_bias=False)(x)))
    x = BasicBlock(8)(x, train)
    x = BasicBlock(12, strides=2)(x, train)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class Inception(nn.Module):
  """Two branches concatenated into a conv."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = nn.relu(nn.Conv(4, (1, 1), name='branch_1x1')(x))
    b = nn.relu(nn.Conv(8, (3, 3), name='branch_3x3')(x))
    y = nn.relu(nn.Conv(8, (3, 3), name='mix')(jnp.concatenate([a, b], axis=-1)))
    return nn.Dense(10, name='head')(y.mean(axis=(1, 2)))


class InvertedResidual(nn.Module):
  """MobileNet-v2 style: expand, depth-wise conv, project, add to the stem."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    x = nn.relu6(norm()(nn.Conv(8, (3, 3), use_bias=False)(x)))
    y = nn.relu6(norm()(nn.Conv(16, (1, 1), use_bias=False)(x)))
    y = nn.Conv(16, (3, 3), feature_group_count=16, use_bias=False)(y)
    y = norm()(nn.Conv(8, (1, 1), use_bias=False)(nn.relu6(norm()(y))))
    return nn.Dense(10)((x + y).mean(axis=(1, 2)))


class Bottleneck(nn.Module):
  """ResNet-50 bottleneck: 1x1, 3x3, 1x1 (4x wider), projected when needed."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(y)
    y = norm()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(nn.relu(norm()(y))))
    if x.shape != y.shape:
      x = norm()(nn.Conv(4 * self.features, (1, 1), self.strides, use_bias=False)(x))
    return nn.relu(x + y)


class BottleneckNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(not train)(nn.Conv(16, (3, 3), use_bias=False)(x)))
    x = Bottleneck(4)(x, train)
    x = Bottleneck(8, strides=2)(x, train)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class EncoderDecoder(nn.Module):
  """Segmentation style: strided conv, transposed conv, per-pixel DenseGeneral."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(not train)(nn.Conv(8, (3, 3), strides=2)(x)))
    x = nn.relu(nn.ConvTranspose(8, (2, 2), strides=(2, 2))(x))
    x = nn.relu(nn.DenseGeneral(12, axis=-1)(x))
    return nn.Conv(3, (1, 1))(x)  # per-pixel logits


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, for the cache
class Case:
  name: str
  model: nn.Module
  takes_train: bool = True

  def apply(self, variables, x, train=False, apply=None):
    """Logits (and updated batch statistics in training), like a user's loop."""
    apply = apply or self.model.apply
    if not self.takes_train:
      return apply(variables, x)
    if train and 'batch_stats' in variables:
      return apply(variables, x, train=True, mutable=['batch_stats'])
    return apply(variables, x, train=train)


CASES = [Case('compact_plain_flatten', PlainNet()),
         Case('setup_identity_residual', SetupResidual()),
         Case('sequential', SEQUENTIAL, takes_train=False),
         Case('projected_residual', ProjectedResNet()),
         Case('concatenation', Inception()),
         Case('depth_wise', InvertedResidual()),
         Case('bottleneck', BottleneckNet()),
         Case('conv_transpose_dense_general', EncoderDecoder()),
         Case('grouped_resnext', zoo_models.ResNeXt()),
         Case('factory_share_scope_remat', zoo_models.FactoryNet(), takes_train=False),
         Case('vit_fused_qkv', zoo_models.ViT('fused'), takes_train=False),
         Case('vit_separate_qkv', zoo_models.ViT('separate'), takes_train=False),
         Case('vit_flax_attention', zoo_models.ViT('flax'), takes_train=False)]
IDS = [case.name for case in CASES]


# Every computation below is jitted once: op-by-op it compiles each primitive anew.
FAST_COMPILE = {'xla_backend_optimization_level': 0}  # tiny models: compiling dominates


@functools.cache
def setup(case: Case):
  """Variables with non-trivial batch statistics, an 8x8 input and the graph."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def init(key):
    variables = case.model.init(key, x, **({'train': False} if case.takes_train else {}))
    if 'batch_stats' in variables:
      variables['batch_stats'] = jax.tree.map(
          lambda v: v + jax.random.uniform(key, v.shape, minval=0.2, maxval=0.8),
          variables['batch_stats'])
    return variables

  variables = init(jax.random.key(1))
  graph = c2s2.trace_channel_graph(lambda v, inputs: case.apply(v, inputs), variables, x)
  return variables, x, graph


@functools.cache
def masked_apply(case: Case):
  """The augmented model in binary mode, jitted once per model (scales and masks are
  arguments)."""

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def apply(variables, x, scales, masks):
    with c2s2.pruning_layers(scales, masks):
      return case.apply(variables, x)

  return apply


def compact(graph, variables, masks, scales):
  """Surgery: fold the scales of kept channels, slice every coupled axis."""
  removal = c2s2.plan(graph, masks, variables)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def surgery(variables):
    params = variables['params']
    for name, mask in masks.items():
      params = c2s2.fold_scale(params, graph.group(name), scales[name] * mask)
    return c2s2.slice_variables({**variables, 'params': params}, removal)

  return surgery(variables)


# ------------------------------------------------------------------ CCI


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_cci_through_the_optax_wrapper_trains_and_ends_cci_sparse(case):
  variables, x, _ = setup(case)
  labels = jnp.arange(x.shape[0]) % 3
  params = variables['params']
  spec = cci.spec_for(params, method='dynamic', group_size=4, keep=1, total_steps=6)
  assert spec.grouped == tuple(
      path for path, shape in _kernels(params) if shape[-2] % 4 == 0)
  tx = cci.sparsify(optax.sgd(0.05, momentum=0.9), spec)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, batch_stats, opt_state):
    def loss(p):
      out = case.apply({'params': cci.forward_params(p, opt_state, spec), **batch_stats},
                       x, train=True)
      logits, updates = out if batch_stats else (out, {})
      logits = logits.reshape(-1, logits.shape[-1])
      targets = jnp.resize(labels, logits.shape[:1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), (
          updates)

    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
    changes, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates, opt_state, value

  batch_stats = {k: v for k, v in variables.items() if k == 'batch_stats'}
  opt_state = jax.jit(tx.init, compiler_options=FAST_COMPILE)(params)
  losses = []
  for _ in range(6):
    params, batch_stats, opt_state, value = step(params, batch_stats, opt_state)
    losses.append(float(value))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  masks = cci.find_state(opt_state).masks
  for path, _ in _kernels(params):
    kernel, mask = (np.asarray(_leaf(tree, path)) for tree in (params, masks))
    if path in spec.grouped:
      kept = mask.reshape(*mask.shape[:-2], -1, 4, mask.shape[-1]).sum(axis=-2)
      np.testing.assert_array_equal(kept, 1, err_msg=path)
      np.testing.assert_array_equal(kernel[~mask], 0, err_msg=path)
    else:
      assert mask.all() and np.all(kernel != 0), path


def test_spec_for_names_a_kernel_it_cannot_group():
  params = setup(CASES[0])[0]['params']
  with pytest.raises(ValueError, match=r'Conv_0/kernel: c_in=3 is not divisible'):
    cci.spec_for(params, include=r'Conv', total_steps=10)
  spec = cci.spec_for(params, include=r'Conv', exclude=r'Conv_0', total_steps=10)
  assert spec.grouped == ('Conv_1/kernel',)
  assert (spec.end_step, spec.freeze_step) == (3, 9)
  with pytest.raises(ValueError, match=r"variables\['params'\]"):
    cci.spec_for(setup(CASES[0])[0], total_steps=10)
  with pytest.raises(ValueError, match='total_steps'):
    cci.spec_for(params)


# ------------------------------------------------------------------ C2S2


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_augmentation_and_a_dense_checkpoint_change_no_output(case):
  variables, x, graph = setup(case)
  assert graph.prunable(), [(g.name, g.reason) for g in graph.groups]
  # The dense checkpoint, written and read back into the model's own tree.
  restored = flax.serialization.from_bytes(
      jax.tree.map(jnp.zeros_like, variables), flax.serialization.to_bytes(variables))
  sites = graph.at_sites({group.name: jnp.ones(group.size) for group in graph.groups})

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def outputs(variables):
    with c2s2.pruning_layers(sites):
      augmented = case.apply(variables, x)
    return (case.apply(variables, x), augmented,
            case.apply(variables, x, apply=c2s2.compact_apply(case.model)))

  expected, augmented, compact_out = outputs(restored)
  np.testing.assert_array_equal(augmented, expected)
  np.testing.assert_array_equal(compact_out, expected)


@pytest.mark.parametrize('case', CASES, ids=IDS)
@hypothesis.settings(deadline=None, max_examples=3)
@hypothesis.given(seed=st.integers(0, 2**32 - 1))
def test_masked_and_compact_outputs_agree(case, seed):
  variables, x, graph = setup(case)
  rng = np.random.default_rng(seed)
  masks, scales = {}, {}
  for group in graph.prunable():
    mask = rng.permutation(group.size) < rng.integers(1, group.size)  # 1..size-1 kept
    masks[group.name] = mask
    scales[group.name] = jnp.asarray(rng.uniform(0.5, 1.5, group.size), jnp.float32)
  expected = masked_apply(case)(variables, x, at_sites(graph, scales),
                                at_sites(graph, masks))
  sliced = compact(graph, variables, masks, scales)
  for name, mask in masks.items():
    group = graph.group(name)
    for c in group.couplings:  # producers' output axes hold the kept units only
      if '/'.join(c.path[:-1]) in group.producers and c.path[-1] == 'kernel':
        size = _leaf(variables['params'], '/'.join(c.path)).shape[c.axis]
        assert _leaf(sliced['params'], '/'.join(c.path)).shape[c.axis] == (
            size // group.size * mask.sum())
  apply = c2s2.compact_apply(case.model)
  out = jax.jit(lambda v: case.apply(v, x, apply=apply), compiler_options=FAST_COMPILE)(
      sliced)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_compact_model_trains_with_batch_statistics():
  case = CASES[6]  # bottleneck
  variables, x, graph = setup(case)
  masks = {g.name: np.arange(g.size) % 2 == 0 for g in graph.prunable()}
  ones = {n: jnp.ones(m.size) for n, m in masks.items()}
  sliced = compact(graph, variables, masks, ones)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def train_outputs(variables, sliced):
    with c2s2.pruning_layers(at_sites(graph, ones), at_sites(graph, masks)):
      expected, _ = case.apply(variables, x, train=True)
    return expected, case.apply(sliced, x, train=True,
                                apply=c2s2.compact_apply(case.model))

  expected, (out, updates) = train_outputs(variables, sliced)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert jax.tree.map(jnp.shape, updates['batch_stats']) == jax.tree.map(
      jnp.shape, sliced['batch_stats'])


@pytest.mark.parametrize('case', [CASES[2], CASES[6]], ids=[IDS[2], IDS[6]])
def test_the_compact_model_traces_and_takes_pruning_layers_again(case):
  """A second round of selection runs on the compact model, whatever the nesting."""
  variables, x, graph = setup(case)
  masks = {g.name: np.arange(g.size) % 3 != 1 for g in graph.prunable()}
  ones = {n: jnp.ones(m.size) for n, m in masks.items()}
  sliced = compact(graph, variables, masks, ones)
  apply = c2s2.compact_apply(case.model)
  again = c2s2.trace_channel_graph(lambda v, inputs: case.apply(v, inputs, apply=apply),
                                   sliced, x)
  assert [(g.name, g.size) for g in again.prunable()] == [
      (name, mask.sum()) for name, mask in masks.items()]
  scales = {g.name: jnp.linspace(0.5, 1.5, g.size) for g in again.prunable()}
  params = sliced['params']
  for name, scale in scales.items():
    params = c2s2.fold_scale(params, again.group(name), scale)
  expected = case.apply({**sliced, 'params': params}, x, apply=apply)
  with c2s2.pruning_layers(at_sites(again, scales)), c2s2.compact_layers():
    inner = case.apply(sliced, x)
  with c2s2.compact_layers(), c2s2.pruning_layers(at_sites(again, scales)):
    outer = case.apply(sliced, x)
  np.testing.assert_allclose(inner, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outer, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ refusals


class ChannelShuffle(nn.Module):
  """ShuffleNet's shuffle: a reshape that mixes channels."""

  @nn.compact
  def __call__(self, x):
    n, h, w, _ = x.shape
    y = nn.relu(nn.Conv(8, (3, 3), name='before_shuffle')(x))
    y = y.reshape(n, h, w, 2, 4).swapaxes(-1, -2).reshape(n, h, w, 8)
    y = nn.relu(nn.Conv(8, (3, 3), name='after_shuffle')(y))
    return nn.Dense(10, name='head')(y.mean(axis=(1, 2)))


class LayerScale(nn.Module):
  """A per-channel scale whose width is written into the code."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('gamma', nn.initializers.ones, (8,))


class HardCoded(nn.Module):
  """A width outside any conv or dense layer: a LayerScale, a fixed flatten, or a
  branch taken on a comparison with a hard-coded width."""
  pattern: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name='conv')(x))
    if self.pattern == 'flatten':
      return nn.Dense(10, name='head')(x.reshape(x.shape[0], 4 * 4 * 8))
    if self.pattern == 'layer_scale':
      x = LayerScale(name='layer_scale')(x)
    elif x.shape[-1] != 8:
      x = nn.Conv(8, (1, 1), name='adapter')(x)
    return nn.Dense(10, name='head')(x.mean(axis=(1, 2)))


def test_a_reshape_mixing_channels_is_refused_by_name():
  case = Case('shuffle', ChannelShuffle(), takes_train=False)
  variables, _, graph = setup(case)
  group = graph.group('before_shuffle')
  assert not group.prunable
  assert 'reshape mixing channels after before_shuffle (reshape)' in group.reason
  assert [g.name for g in graph.prunable()] == ['after_shuffle']
  mask = np.arange(8) < 4
  with pytest.raises(ValueError, match='before_shuffle cannot lose channels: reshape'):
    c2s2.plan(graph, {'before_shuffle': mask}, variables)


@pytest.mark.parametrize('pattern, culprit', [
    ('layer_scale', r'(?s)layer_scale \(LayerScale\).*ScopeParamShapeError'),
    ('flatten', r'(?s)the root module \(HardCoded\).*TypeError: cannot reshape'),
    ('branch', r'(?s)adapter \(Conv\).*branch the original widths did not')])
def test_a_width_compact_apply_cannot_set_is_refused_by_name(pattern, culprit):
  case = Case(pattern, HardCoded(pattern), takes_train=False)
  variables, x, graph = setup(case)
  group = graph.group('conv')
  assert group.prunable, group.reason
  mask = np.arange(8) < 4
  sliced = c2s2.slice_variables(variables, c2s2.plan(graph, {'conv': mask}, variables))
  with pytest.raises(c2s2.CompactApplyError, match=culprit):
    c2s2.compact_apply(case.model)(sliced, x)


def test_an_inconsistent_kernel_is_refused_by_name():
  case = CASES[3]  # projected_residual
  variables, x, _ = setup(case)
  params = jax.tree.map(lambda a: a, variables['params'])
  block = dict(params['BasicBlock_0'])
  block['Conv_1'] = {'kernel': block['Conv_1']['kernel'][:, :, :5]}  # c_in 8 -> 5
  params['BasicBlock_0'] = block
  with pytest.raises(c2s2.CompactApplyError, match=r'BasicBlock_0/Conv_1 \(Conv\): a '
                     r'8-channel input does not fit'):
    case.apply({**variables, 'params': params}, x, apply=c2s2.compact_apply(case.model))


# ------------------------------------------------------------------ helpers


def at_sites(graph, per_group):
  """{site: float array} from {group name: array} (the pruning layers' arguments)."""
  return graph.at_sites({name: jnp.asarray(value, jnp.float32)
                         for name, value in per_group.items()})


def _kernels(params):
  """(path, shape) of every conv and dense kernel, in tree order (CCI leaves the 3-D
  kernels of DenseGeneral to or from several axes dense)."""
  return [(cci.masks.path_of(kp), leaf.shape)
          for kp, leaf in jax.tree_util.tree_leaves_with_path(params)
          if cci.masks.path_of(kp).endswith('kernel') and leaf.ndim in (2, 4)]


def _leaf(tree, path):
  for key in path.split('/'):
    tree = tree[key]
  return tree


# ------------------------------------------------------------ docs/your_model.md


def test_the_documented_examples_run_on_a_foreign_model():
  """docs/your_model.md, "Your own Flax models": both code blocks, as written."""
  case = CASES[0]
  variables, x, _ = setup(case)
  blocks = markdown_docs.code_blocks('docs/your_model.md', 'Your own Flax models')
  assert len(blocks) == 2
  namespace = {'optax': optax, 'jnp': jnp, 'model': case.model, 'x': x,
               'params': variables['params'], 'variables': variables, 'num_steps': 10}
  for block in blocks:
    exec(block, namespace)  # pylint: disable=exec-used
  groups = namespace['graph'].prunable()
  masked = masked_apply(case)(
      variables, x, {s: namespace['scales'][g.name] for g in groups for s in g.sites},
      {s: jnp.asarray(namespace['masks'][g.name], jnp.float32) for g in groups
       for s in g.sites})
  np.testing.assert_allclose(namespace['logits'], masked, atol=1e-5, rtol=1e-5)
