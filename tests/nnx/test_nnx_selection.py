"""C2S2's progressive selection and the channel baselines on a user's NNX model and data.

The held-out labels are the dense model's own predictions, so its reference top-1 is 1
and the cost check decides on what pruning costs. Each branch of the cost check is
driven by the budget: always within (accept), never within (restore or halve lambda,
then give up).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import c2s2
from c2s2 import criteria
from tests.nnx import models
from train import nnx_selection

UNIT = ('blocks/0/conv1', 'blocks/1/conv1')  # the groups outside residual streams


@functools.cache
def problem():
  """The model, endless training batches and the held-out batches (its labels)."""
  model = models.build(models.ResidualNet)
  model.eval()
  images = jax.random.normal(jax.random.key(3), (3, 4, 8, 8, 3))
  labels = jnp.argmax(jax.vmap(model)(images), -1)
  batches = list(zip(images, labels))
  return model, batches


def run(**overrides):
  model, batches = problem()
  before = jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model)))
  options = nnx_selection.C2S2Options(**{
      'phase1_steps': 3, 'phase2_steps': 1, 'lambda_l1': 1.0, 'scale_learning_rate': 0.5,
      'layers_per_step': 2, 'min_channels': 2, 'max_retries': 1, **overrides})
  result = nnx_selection.select_c2s2(
      model, itertools.cycle(batches[:2]), lambda: batches[2:], optax.sgd(0.01), options)
  after = jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model)))
  assert jax.tree.all(jax.tree.map(np.array_equal, before, after))  # untouched
  return result


def widths(model):
  return {name: int(model.blocks[int(name.split('/')[1])].conv1.out_features)
          for name in UNIT}


def test_within_budget_the_unit_is_accepted_and_removed():
  result = run(epsilon=1.0)
  assert result.reference == pytest.approx({'top1': 1.0, 'loss': result.reference['loss']})
  [decision] = result.decisions
  assert decision['action'] == 'accept' and decision['retry'] == 0
  kept = {n: layer['kept'] for n, layer in decision['layers'].items()}
  # A strong L1 pull (threshold 0.5 a step) prunes; binarisation keeps min_channels.
  for name, layer in decision['layers'].items():
    assert 2 <= layer['kept'] < layer['channels'], name
  assert widths(result.model) == kept
  compact = result.model
  width = kept['blocks/0/conv1']
  assert compact.blocks[0].bn1.num_features == compact.blocks[0].conv2.in_features == width
  assert compact.blocks[0].bn1.mean.shape == (width,)
  assert compact.blocks[1].conv1.kernel.shape == (3, 3, 8, kept['blocks/1/conv1'])
  assert np.all(np.isfinite(compact(problem()[1][0][0])))


def test_over_budget_restores_then_gives_up():
  result = run(epsilon=-1.0, on_over_budget='restore')
  first, second = result.decisions
  assert (first['action'], second['action']) == ('restore', 'give_up')
  assert second['retry'] == 1
  for name in UNIT:
    total, kept = first['layers'][name]['channels'], first['layers'][name]['kept']
    assert second['layers'][name]['kept'] == kept + -(-(total - kept) // 2)
  assert widths(result.model) == {n: 8 if n.startswith('blocks/0') else 12 for n in UNIT}


def test_over_budget_halves_lambda_and_redoes_phase_one():
  result = run(epsilon=-1.0, on_over_budget='halve_lambda')
  first, second = result.decisions
  assert (first['action'], second['action']) == ('halve_lambda', 'give_up')
  for name in UNIT:
    assert second['layers'][name]['lambda'] == first['layers'][name]['lambda'] / 2
  assert widths(result.model) == {'blocks/0/conv1': 8, 'blocks/1/conv1': 12}


def test_paced_budget_grows_along_the_units(monkeypatch):
  allowed = []  # The drop each cost check was allowed (the toy's drop is 0).
  check = nnx_selection.selection.within_budget
  monkeypatch.setattr(nnx_selection.selection, 'within_budget',
                      lambda ref, cost, eps: allowed.append(eps) or check(ref, cost, eps))
  result = run(epsilon=0.5, budget='paced', layers_per_step=1, max_retries=0)
  assert [d['unit'] for d in result.decisions] == [0, 1]
  assert [d['budget'] for d in result.decisions] == allowed == [0.25, 0.5]


def test_bad_options_are_refused_by_name():
  with pytest.raises(ValueError, match="C2S2Options.budget='greedy'"):
    nnx_selection.C2S2Options(phase1_steps=1, phase2_steps=1, budget='greedy')
  with pytest.raises(ValueError, match='C2S2Options.phase2_steps must be >= 1'):
    nnx_selection.C2S2Options(phase1_steps=1, phase2_steps=0)
  with pytest.raises(ValueError, match="on_over_budget='drop'"):
    nnx_selection.C2S2Options(phase1_steps=1, phase2_steps=1, on_over_budget='drop')
  model, batches = problem()
  with pytest.raises(ValueError, match=r'C2S2Options.include selects head, whose '
                     r'channels cannot be removed: model output \(head\)'):
    nnx_selection.select_c2s2(model, iter(batches), lambda: batches, optax.sgd(0.1),
                              nnx_selection.C2S2Options(1, 1, include='head'))
  with pytest.raises(ValueError, match='prune_by_criterion selects no prunable'):
    nnx_selection.prune_by_criterion(model, batches[0][0], 'l1_filter', 0.5,
                                     exclude='.')


class BareNorm(nnx.Module):
  """A batch norm without scale or bias after the conv: nothing to fold a scale into."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(8, use_scale=False, use_bias=False, rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.norm(self.conv(x))).mean(axis=(1, 2)))


def test_a_site_without_parameters_is_refused_by_name():
  _, batches = problem()
  model = models.build(BareNorm)
  with pytest.raises(ValueError, match=r'group conv has a site without a scale or '
                     r"kernel to fold its pruning layer into \(\('norm',\)\)"):
    nnx_selection.select_c2s2(model, iter(batches), lambda: batches, optax.sgd(0.1),
                              nnx_selection.C2S2Options(1, 1))


@pytest.mark.parametrize('method', ['l1_filter', 'slimming'])
def test_channel_baselines_on_an_nnx_model(method):
  model, batches = problem()
  x = batches[0][0]
  compact, masks = nnx_selection.prune_by_criterion(model, x, method, 0.5)
  assert sorted(masks) == sorted(UNIT)
  graph = c2s2.nnx.trace_channel_graph(model, x)
  params = c2s2.nnx.variables_of(model)['params']
  criterion = {'l1_filter': criteria.filter_l1_norms, 'slimming': criteria.norm_scales}
  importance = {n: criterion[method](params, graph.group(n)) for n in UNIT}
  choose = {'l1_filter': criteria.uniform_masks,
            'slimming': criteria.global_threshold_masks}[method]
  expected = choose(importance, 0.5, 2)
  for name in UNIT:
    np.testing.assert_array_equal(masks[name], expected[name])
  assert widths(compact) == {n: int(m.sum()) for n, m in masks.items()}
  apply, variables = c2s2.nnx.functional(model)
  folded = c2s2.fold_scales(variables['params'], graph,
                            {n: jnp.ones(m.size) for n, m in masks.items()}, masks)
  np.testing.assert_allclose(compact(x), apply({**variables, 'params': folded}, x)[0],
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="method='random'"):
    nnx_selection.prune_by_criterion(model, x, 'random', 0.5)
