"""CCI and C2S2 on Flax NNX models (issue 17).

The models of tests/nnx/models.py are written as NNX users write them and never
edited: CCI enters through the optax wrapper on the `nnx.Param` state, C2S2 through
`c2s2.nnx` (a pure function made with `nnx.split`/`nnx.merge` for the graph, scales
folded into the sites, and a compact `nnx.Module` built by attribute surgery).
"""

import dataclasses
import functools
from collections.abc import Callable

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import c2s2
import cci
from tests.nnx import models

FAST_COMPILE = {'xla_backend_optimization_level': 0}  # tiny models: compiling dominates


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, for the cache
class Case:
  name: str
  make: Callable[[nnx.Rngs], nnx.Module]
  prunable: tuple[str, ...]  # the groups the graph can prune, in execution order


CASES = [
    Case('sequential_flatten_batch_norm', models.plain_net,
         ('layers/0', 'layers/4', 'layers/9')),
    Case('identity_and_projection_residual', models.ResidualNet,
         ('stem', 'blocks/0/conv1', 'blocks/1/conv1', 'blocks/1/conv2')),
    Case('concatenation', models.Inception, ('branch_1x1', 'branch_3x3', 'mix')),
    Case('depth_wise', models.InvertedResidual, ('stem', 'expand')),
    Case('layer_norm', models.LayerNormNet, ('mlp',)),
    Case('conv_transpose_linear_general', models.EncoderDecoder, ('down', 'up', 'mix')),
]
IDS = [case.name for case in CASES]


def some_cases(*default: str) -> list:
  """Every case; those not named run only with the slow tests (`pytest -m slow`)."""
  return [pytest.param(case, id=case.name,
                       marks=() if case.name in default else pytest.mark.slow)
          for case in CASES]


@functools.cache
def setup(case: Case):
  """A model in eval mode with non-trivial batch statistics, an input and its graph."""
  model = models.build(case.make)
  stats = nnx.state(model, nnx.BatchStat)
  key = jax.random.key(1)
  nnx.update(model, jax.tree.map(
      lambda v: v + jax.random.uniform(key, v.shape, minval=0.2, maxval=0.8), stats))
  model.eval()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  return model, x, c2s2.nnx.trace_channel_graph(model, x)


@functools.cache
def masked_apply(case: Case):
  """The dense model with each group's pruning layer (scale times mask) folded in,
  jitted once per model (scales and masks are arguments)."""
  model, _, graph = setup(case)
  apply, variables = c2s2.nnx.functional(model)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def outputs(x, scales, masks):
    params = c2s2.fold_scales(variables['params'], graph, scales, masks)
    return apply({**variables, 'params': params}, x)[0]

  return outputs


def random_selection(graph, seed):
  rng = np.random.default_rng(seed)
  masks, scales = {}, {}
  for group in graph.prunable():
    masks[group.name] = rng.permutation(group.size) < rng.integers(1, group.size)
    scales[group.name] = jnp.asarray(rng.uniform(0.5, 1.5, group.size), jnp.float32)
  return masks, scales


def cross_entropy(logits, labels):
  logits = logits.reshape(-1, logits.shape[-1])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.resize(labels, logits.shape[:1])).mean()


# ------------------------------------------------------------------ CCI


def _kernels(params):
  return [(cci.masks.path_of(kp), leaf.shape)
          for kp, leaf in jax.tree_util.tree_leaves_with_path(params)
          if cci.masks.path_of(kp).endswith('kernel')]


def _assert_exactly_k_of_g(params, masks, spec):
  """Every grouped kernel keeps exactly k of g (zeros elsewhere); others stay dense."""
  kernels = dict(jax.tree_util.tree_leaves_with_path(nnx.as_pure(params)))
  masks = dict(jax.tree_util.tree_leaves_with_path(nnx.as_pure(masks)))
  for key_path, kernel in kernels.items():
    path, mask, kernel = cci.masks.path_of(key_path), masks[key_path], np.asarray(kernel)
    if path in spec.grouped:
      mask = np.asarray(mask)
      kept = mask.reshape(*mask.shape[:-2], -1, spec.group_size, mask.shape[-1]).sum(-2)
      np.testing.assert_array_equal(kept, spec.keep, err_msg=path)
      np.testing.assert_array_equal(kernel[~mask], 0, err_msg=path)
    elif path.endswith('kernel'):
      assert np.all(kernel != 0), path


@pytest.mark.parametrize('case', some_cases('identity_and_projection_residual',
                                            'depth_wise'))
def test_cci_on_the_param_state_trains_and_ends_exactly_k_of_g(case):
  """The functional loop: nnx.split, the optax wrapper, forward_params, nnx.merge."""
  model, x, _ = setup(case)
  model = nnx.clone(model)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  spec = cci.spec_for(params, method='dynamic', group_size=4, keep=1, total_steps=6)
  assert spec.grouped == tuple(p for p, shape in _kernels(params) if shape[-2] % 4 == 0)
  assert all('/value' not in path for path in spec.grouped)
  tx = cci.sparsify(optax.sgd(0.05, momentum=0.9), spec)
  labels = jnp.arange(x.shape[0]) % 3

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, rest, opt_state):
    def loss(params, rest):
      net = nnx.merge(graphdef, cci.forward_params(params, opt_state, spec), rest,
                      copy=True)
      return cross_entropy(net(x), labels), nnx.state(net, nnx.BatchStat)

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, rest)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, value

  opt_state = tx.init(params)
  losses = []
  for _ in range(6):
    params, stats, opt_state, value = step(params, rest, opt_state)
    nnx.update(rest, stats)
    losses.append(float(value))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  _assert_exactly_k_of_g(params, cci.find_state(opt_state).masks, spec)


def test_spec_for_refuses_a_state_with_batch_statistics():
  model, _, _ = setup(CASES[0])
  with pytest.raises(ValueError, match=r'nnx.state\(model, nnx.Param\).*BatchStat'):
    cci.spec_for(nnx.state(model), total_steps=6)
  spec = cci.spec_for(nnx.state(model, nnx.Param), include='layers/4', total_steps=6)
  assert spec.grouped == ('layers/4/kernel',)


@pytest.mark.parametrize('method', cci.METHODS)
def test_cci_with_nnx_optimizer_every_algorithm(method):
  """nnx.Optimizer around the wrapper; `cci.nnx.masked` for the forward pass."""
  model, x, _ = setup(CASES[1])
  model = nnx.clone(model)
  model.train()
  spec = cci.spec_for(nnx.state(model, nnx.Param), method=method, group_size=4, keep=1,
                      total_steps=6)
  optimizer = nnx.Optimizer(model, cci.sparsify(optax.sgd(0.05, momentum=0.9), spec),
                            wrt=nnx.Param)
  labels = jnp.arange(x.shape[0]) % 3
  stats_before = nnx.as_pure(nnx.state(model, nnx.BatchStat))

  @nnx.jit
  def step(model, optimizer):
    def loss(model):
      with cci.nnx.masked(model, optimizer.opt_state, spec):
        return cross_entropy(model(x), labels)

    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  losses = [float(step(model, optimizer)) for _ in range(6)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  state = cci.find_state(nnx.as_pure(optimizer.opt_state))
  assert int(state.step) == 6
  _assert_exactly_k_of_g(nnx.state(model, nnx.Param), state.masks, spec)
  # The training-mode forward passes updated the model's own batch statistics.
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats_before,
                         nnx.as_pure(nnx.state(model, nnx.BatchStat)))
  assert all(jax.tree.leaves(changed))


# ------------------------------------------------------------------ C2S2


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_the_graph_names_groups_by_attribute_path(case):
  model, _, graph = setup(case)
  assert tuple(g.name for g in graph.prunable()) == case.prunable
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  for group in graph.groups:  # every producer is a module holding a kernel
    for producer in group.producers:
      node = params
      for key in producer.split('/'):
        node = node[int(key) if key.isdigit() else key]
      assert 'kernel' in node, producer


def test_a_layer_norm_across_pruned_channels_is_refused_by_name():
  model, _, graph = setup(CASES[4])
  group = graph.group('conv')
  assert not group.prunable
  assert 'reduction over channels after conv (reduce_sum)' in group.reason
  with pytest.raises(ValueError, match='conv cannot lose channels: reduction over'):
    c2s2.nnx.compact(model, graph, {'conv': np.arange(8) < 4})


def _assert_attributes_match_arrays(model):
  """Every layer's width attributes agree with its arrays."""
  for path, module in nnx.iter_graph(model):
    where = '/'.join(map(str, path))
    if isinstance(module, nnx.Conv):
      *_, kernel_in, out = module.kernel.shape
      assert module.kernel_shape == module.kernel.shape, where
      assert (module.in_features, module.out_features) == (
          kernel_in * module.feature_group_count, out), where
    elif isinstance(module, nnx.ConvTranspose):
      assert module.kernel_shape == module.kernel.shape, where
      assert (module.in_features, module.out_features) == module.kernel.shape[-2:], where
    elif isinstance(module, nnx.Linear):
      assert (module.in_features, module.out_features) == module.kernel.shape, where
    elif isinstance(module, nnx.LinearGeneral):
      assert module.in_features + module.out_features == module.kernel.shape, where
      assert module.bias.shape == module.out_features, where
    if isinstance(module, (nnx.Conv, nnx.ConvTranspose, nnx.Linear)) and (
        module.bias is not None):
      assert module.bias.shape == (module.out_features,), where
    if isinstance(module, (nnx.BatchNorm, nnx.LayerNorm)):
      assert module.scale.shape == module.bias.shape == (module.num_features,), where


@pytest.mark.parametrize('case', CASES, ids=IDS)
@hypothesis.settings(deadline=None, max_examples=2)
@hypothesis.given(seed=st.integers(0, 2**32 - 1))
def test_masked_and_compact_outputs_agree(case, seed):
  model, x, graph = setup(case)
  masks, scales = random_selection(graph, seed)
  before = jax.tree.map(jnp.shape, nnx.as_pure(nnx.state(model)))
  expected = masked_apply(case)(x, scales, {n: jnp.asarray(m, jnp.float32)
                                            for n, m in masks.items()})
  compact = c2s2.nnx.compact(model, graph, masks, scales)
  assert jax.tree.map(jnp.shape, nnx.as_pure(nnx.state(model))) == before  # untouched
  compact_params = c2s2.nnx.variables_of(compact)['params']
  for name, mask in masks.items():
    for producer in graph.group(name).producers:
      node = compact_params
      for key in producer.split('/'):
        node = node[key]
      assert node['kernel'].shape[-1] == mask.sum()
  _assert_attributes_match_arrays(compact)
  out = nnx.jit(lambda m: m(x))(compact)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', some_cases('sequential_flatten_batch_norm', 'depth_wise'))
def test_the_compact_model_trains_saves_and_reloads(case, tmp_path):
  model, x, graph = setup(case)
  masks = {g.name: np.arange(g.size) % 2 == 0 for g in graph.prunable()}
  compact = c2s2.nnx.compact(model, graph, masks)
  expected = compact(x)
  # Round trip through nnx.split / nnx.merge.
  graphdef, state = nnx.split(compact)
  np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), expected)
  # Orbax: the state saved, restored into the structure the user rebuilds from the
  # dense constructor (other weights) and the saved masks.
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'compact', state)
  checkpointer.wait_until_finished()
  rebuilt = c2s2.nnx.compact(models.build(case.make, 7), graph, masks)
  rebuilt.eval()
  rebuilt_def, rebuilt_state = nnx.split(rebuilt)
  restored = checkpointer.restore(
      tmp_path / 'compact', jax.tree.map(ocp.utils.to_shape_dtype_struct, rebuilt_state))
  np.testing.assert_array_equal(nnx.merge(rebuilt_def, restored)(x), expected)
  # A training step of the compact model: finite gradients, the loss goes down.
  compact.train()
  optimizer = nnx.Optimizer(compact, optax.sgd(0.05), wrt=nnx.Param)
  labels = jnp.arange(x.shape[0]) % 3

  @nnx.jit
  def step(model, optimizer):
    value, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), labels))(model)
    optimizer.update(model, grads)
    return value, grads

  first, grads = step(compact, optimizer)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  second, _ = step(compact, optimizer)
  assert np.isfinite(first) and second < first


class LayerScale(nnx.Module):
  """A per-channel scale of its own type: compact does not know its width attribute."""

  def __init__(self, width: int):
    self.width = width
    self.gamma = nnx.Param(jnp.linspace(0.5, 1.5, width))

  def __call__(self, x):
    return x * self.gamma[...]


class ScaledNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.layer_scale = LayerScale(8)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(self.layer_scale(nnx.relu(self.conv(x))).mean(axis=(1, 2)))


def test_a_module_of_unknown_width_is_refused_by_name():
  model = models.build(ScaledNet)
  x = jnp.ones((1, 8, 8, 3))
  graph = c2s2.nnx.trace_channel_graph(model, x)
  assert graph.group('conv').prunable  # gamma is coupled to the conv's channels
  with pytest.raises(c2s2.nnx.CompactModelError,
                     match=r'layer_scale \(LayerScale\) holds arrays whose channels'):
    c2s2.nnx.compact(model, graph, {'conv': np.arange(8) < 4})
  assert model.layer_scale.gamma.shape == (8,) and model.conv.out_features == 8
