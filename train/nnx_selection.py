"""C2S2's progressive selection and the channel baselines on a user's Flax NNX model.

`select_c2s2(model, train_batches, held_out, tx, options)` runs METHODS.md 2.2 with the
user's own data: for each unit of `layers_per_step` groups, input to output, phase 1
trains the unit's pruning scales (folded into their sites, `c2s2.fold_scales`) with the
L1 proximal step and the weights with `tx`; binarisation fixes the mask; phase 2
fine-tunes; the cost check compares held-out top-1 with the dense model's and restores
channels, or halves lambda and redoes phase 1 from the unit's start, or gives the unit
up; surgery returns a smaller NNX model (`c2s2.nnx.compact`). Unlike
`train.c2s2_driver` (whose schedule of units and cost-check moves, `c2s2.selection`, it
shares) it keeps everything in memory (no checkpoints, no resume), takes
batches as `(images, integer labels)` and a classification loss, and stops only when
every unit is done (no `target_macs_ratio`).

`prune_by_criterion(model, x, method, fraction)` is the one-shot baselines of
`train.channel_baselines` (L1-norm filters, network slimming) on an NNX model.
"""

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

import c2s2
from c2s2 import selection, surgery
from train import channel_baselines, model_setup

Batch = tuple[jax.Array, jax.Array]


class UnitState(NamedTuple):
  """What the steps of one unit change: group name -> (C,) arrays for its groups."""
  variables: dict[str, Any]
  opt_state: Any
  scales: dict[str, jax.Array]
  importance: dict[str, jax.Array]  # accumulated |scale| of phase 1
  masks: dict[str, jax.Array]  # the binary masks of phase 2 (float)


@dataclasses.dataclass(frozen=True)
class C2S2Options:
  """The keys of `config.channel_pruning` that C2S2 uses, steps instead of epochs.

  `cost_weights` (group name -> lambda multiplier, default 1; `c2s2.cost_weights`
  makes them from MACs per channel) replaces `cost_weighting`.
  """
  phase1_steps: int
  phase2_steps: int
  lambda_l1: float = 0.03
  epsilon: float = 0.005
  budget: str = 'cumulative'  # or 'paced' (c2s2.selection.unit_budget)
  include: str = ''
  exclude: str = ''
  prune_residual_stream: bool = False
  layers_per_step: int = 1
  scale_learning_rate: float = 0.1
  weight_learning_rate: float = 0.01  # of the scales in phase 2 (the weights use tx)
  train_weights_in_phase1: bool = True
  max_retries: int = 3
  on_over_budget: str = 'restore'
  min_channels: int = 2
  channel_multiple: int = 1
  cost_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for key in ('phase1_steps', 'phase2_steps', 'layers_per_step', 'min_channels',
                'channel_multiple'):
      if getattr(self, key) < 1:
        raise ValueError(f'C2S2Options.{key} must be >= 1, got {getattr(self, key)}.')
    if self.on_over_budget not in selection.ON_OVER_BUDGET:
      raise ValueError(f'C2S2Options.on_over_budget={self.on_over_budget!r}; choose '
                       f'one of {selection.ON_OVER_BUDGET}.')
    if self.budget not in selection.BUDGETS:
      raise ValueError(f'C2S2Options.budget={self.budget!r}; choose one of '
                       f'{selection.BUDGETS}.')


@dataclasses.dataclass
class Selection:
  """What `select_c2s2` returns.

  Attributes:
    model: the compact NNX model (the user's model is not modified).
    reference: the dense model's held-out metrics ('top1', 'loss').
    decisions: one record per cost check: unit, retry, action, metrics, per-group
      lambda and kept/total channels.
  """
  model: nnx.Module
  reference: dict[str, float]
  decisions: list[dict[str, Any]]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class _Selector:
  """The model and optimiser state as selection shrinks them, unit after unit."""

  def __init__(self, model, train_batches, held_out, tx, options, example):
    self.train_batches, self.held_out = train_batches, held_out
    self.tx, self.options = tx, options
    self.model, self.example = nnx.clone(model), example
    self.opt_state = None

  def views(self):
    """Of the current model: the training-mode function, the jitted held-out sums (eval
    mode), its variables and its graph."""
    train_model, eval_model = nnx.clone(self.model), nnx.clone(self.model)
    train_model.train()
    eval_model.eval()
    train_apply, variables = c2s2.nnx.functional(train_model)
    eval_apply, _ = c2s2.nnx.functional(eval_model)
    graph = c2s2.nnx.trace_channel_graph(eval_model, self.example)

    @jax.jit
    def sums(variables, scales, masks, images, labels):
      params = surgery.fold_scales(variables['params'], graph, scales, masks)
      logits, _ = eval_apply({**variables, 'params': params}, images)
      return (jnp.sum(jnp.argmax(logits, -1) == labels),
              jnp.sum(_cross_entropy(logits, labels)))

    return train_apply, sums, variables, graph

  def evaluate(self, sums, variables, scales, masks) -> dict[str, float]:
    """Held-out top-1 and mean loss of the model with the unit's pruning layers."""
    correct = loss = count = 0
    for images, labels in self.held_out():
      c, l = sums(variables, scales, masks, images, labels)
      correct, loss, count = correct + int(c), loss + float(l), count + len(labels)
    if not count:
      raise ValueError('select_c2s2: held_out() yielded no batch.')
    return {'top1': correct / count, 'loss': loss / count}

  def make_step(self, train_apply, graph, phase: str):
    """The jitted training step of `phase` (lambdas are an argument: halving them
    does not compile it again)."""
    options, tx = self.options, self.tx
    freeze = phase == 'phase1' and not options.train_weights_in_phase1

    @jax.jit
    def step(state: UnitState, lambdas, images, labels) -> UnitState:
      variables, opt_state, scales, importance, masks = state

      def loss_fn(params, scales):
        forward = surgery.fold_scales(params, graph, scales,
                                      masks if phase == 'phase2' else None)
        logits, after = train_apply({**variables, 'params': forward}, images)
        return _cross_entropy(logits, labels).mean(), after

      (_, after), (grads, scale_grads) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(variables['params'], scales)
      params = variables['params']
      if not freeze:
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
      if phase == 'phase1':
        scales = {n: selection.proximal_sgd_step(s, scale_grads[n],
                                                 options.scale_learning_rate, lambdas[n])
                  for n, s in scales.items()}
        importance = {n: importance[n] + jnp.abs(scales[n]) for n in scales}
      else:  # Pruned scales get no gradient through the fixed mask and stay 0.
        scales = {n: s - options.weight_learning_rate * scale_grads[n]
                  for n, s in scales.items()}
      return UnitState({**after, 'params': params}, opt_state, scales, importance, masks)

    return step

  def train_phase(self, step, phase: str, lambdas: dict[str, float],
                  state: UnitState) -> UnitState:
    """Runs the steps of one phase on the user's training batches."""
    count = self.options.phase1_steps if phase == 'phase1' else self.options.phase2_steps
    for _ in range(count):
      images, labels = next(self.train_batches)
      state = step(state, lambdas, images, labels)
    return state

  @staticmethod
  def fixed(state: UnitState, masks: dict[str, np.ndarray]) -> UnitState:
    """`state` in binary mode with `masks`; kept channels whose scale is 0 (restored)
    get scale 1."""
    return state._replace(scales=selection.scales_for_masks(state.scales, masks),
                          masks={n: jnp.asarray(m, jnp.float32) for n, m in masks.items()})

  def unit(self, number: int, names: list[str], reference, decisions,
           num_units: int) -> None:
    """Selects the channels of unit `number` (of `num_units`) and replaces the model
    with the smaller one."""
    options = self.options
    budget = selection.unit_budget(options.epsilon, number, num_units, options.budget)
    train_apply, sums, variables, graph = self.views()
    steps = {phase: self.make_step(train_apply, graph, phase)
             for phase in ('phase1', 'phase2')}
    if self.opt_state is None:
      self.opt_state = self.tx.init(variables['params'])
    lambdas = {n: options.lambda_l1 * options.cost_weights.get(n, 1.0) for n in names}
    sizes = {n: graph.group(n).size for n in names}
    start = UnitState(variables, self.opt_state,
                      scales={n: jnp.ones(c) for n, c in sizes.items()},
                      importance={n: jnp.zeros(c) for n, c in sizes.items()},
                      masks={n: jnp.ones(c) for n, c in sizes.items()})
    state, phase, retry = start, 'phase1', 0
    while True:
      if phase == 'phase1':
        state = self.train_phase(steps['phase1'], 'phase1', lambdas, state)
        state = self.fixed(state, selection.binarize_all(
            jax.device_get(state.scales), jax.device_get(state.importance),
            options.min_channels, options.channel_multiple))
      state = self.train_phase(steps['phase2'], 'phase2', lambdas, state)
      cost = self.evaluate(sums, state.variables, state.scales, state.masks)
      chosen = {n: np.asarray(m) > 0 for n, m in state.masks.items()}
      action = selection.decide(
          selection.within_budget(reference, cost, budget), retry,
          options.max_retries, options.on_over_budget)
      decisions.append({
          'unit': number, 'retry': retry, 'action': action, 'cost': cost, 'budget': budget,
          'layers': {n: {'lambda': lambdas[n], 'channels': int(m.size),
                         'kept': int(m.sum())} for n, m in chosen.items()}})
      logging.info('C2S2 unit %d: held-out top-1 %.4f (reference %.4f), kept %s: %s.',
                   number, cost['top1'], reference['top1'],
                   {n: f'{m.sum()}/{m.size}' for n, m in chosen.items()}, action)
      retry += 1
      if action == 'restore':
        importance = jax.device_get(state.importance)
        state = self.fixed(state, {
            n: selection.restore_half(m, importance[n], options.channel_multiple)
            for n, m in chosen.items()})
        phase = 'phase2'
      elif action == 'halve_lambda':
        lambdas = {n: value / 2 for n, value in lambdas.items()}
        state, phase = start, 'phase1'
      else:
        if action == 'give_up':
          chosen = {n: np.ones_like(m) for n, m in chosen.items()}
        self.operate(graph, state, chosen)
        return

  def operate(self, graph, state: UnitState, masks: dict[str, np.ndarray]) -> None:
    """Surgery: folds the unit's kept scales, slices variables and optimiser state."""
    params = state.variables['params']
    for name, mask in masks.items():
      params = surgery.fold_scale(params, graph.group(name), state.scales[name] * mask)
    removal = surgery.plan(graph, masks, state.variables)
    self.opt_state = surgery.slice_params_like(state.opt_state,
                                               state.variables['params'], removal)
    sliced = surgery.slice_variables({**state.variables, 'params': params}, removal)
    self.model = c2s2.nnx.with_variables(self.model, sliced)


def select_c2s2(model: nnx.Module, train_batches: Iterator[Batch],
                held_out: Callable[[], Iterable[Batch]],
                tx: optax.GradientTransformation, options: C2S2Options) -> Selection:
  """C2S2's progressive selection with the cost check on an NNX classifier.

  Args:
    model: the pre-trained NNX model; `model(images)` returns logits. Not modified.
    train_batches: an endless iterator of `(images, integer labels)` batches.
    held_out: returns a fresh iterable over the held-out batches (the cost check's;
      never trained on), called once for the reference and once per cost check.
    tx: the weights' optimiser during selection (its state is sliced by surgery).
    options: the schedule and the cost check (`C2S2Options`).

  Returns:
    The compact model, the dense reference metrics and every decision.

  Raises:
    ValueError: `include` or `prune_residual_stream` selects a group the graph cannot
      prune, nothing is left to prune, or a group's sites have nothing to fold the
      scales into (names the group).
  """
  example = next(iter(held_out()))[0]
  selector = _Selector(model, train_batches, held_out, tx, options, example)
  _, sums, variables, graph = selector.views()
  names = model_setup.candidate_groups(graph, options, 'C2S2Options')
  for name in names:
    if not surgery.foldable(variables['params'], graph.group(name)):
      raise ValueError(f'select_c2s2: group {name} has a site without a scale or kernel '
                       f'to fold its pruning layer into ({graph.group(name).sites}).')
  reference = selector.evaluate(sums, variables, {}, None)
  decisions: list[dict[str, Any]] = []
  units = selection.units(names, options.layers_per_step)
  for number, unit in enumerate(units):
    selector.unit(number, unit, reference, decisions, len(units))
  return Selection(selector.model, reference, decisions)


def prune_by_criterion(model: nnx.Module, example: jax.Array, method: str,
                       fraction: float, *, include: str = '', exclude: str = '',
                       prune_residual_stream: bool = False, min_channels: int = 2,
                       channel_multiple: int = 1) -> tuple[nnx.Module, dict[str, np.ndarray]]:
  """A one-shot channel-pruning baseline on an NNX model (`train.channel_baselines`).

  Args:
    model: the NNX model (not modified); `example`: an input batch for the graph.
    method: 'l1_filter' (the same fraction of every group, smallest filter L1 norms)
      or 'slimming' (one global threshold on the norm scales after the producers).
    fraction: of the channels to remove.
    include, exclude, prune_residual_stream: the groups, as for `select_c2s2`.
    min_channels, channel_multiple: kept per group at least, rounded up to.

  Returns:
    The compact model and the kept-channel mask of every selected group.
  """
  if method not in channel_baselines.METHODS:
    raise ValueError(f'prune_by_criterion: method={method!r}; choose one of '
                     f'{channel_baselines.METHODS}.')
  graph = c2s2.nnx.trace_channel_graph(model, example)
  names = model_setup.candidate_groups(graph, types.SimpleNamespace(
      include=include, exclude=exclude, prune_residual_stream=prune_residual_stream),
      'prune_by_criterion')
  params = c2s2.nnx.variables_of(model)['params']
  importance = channel_baselines.importance_of(method, params, graph, names)
  masks = channel_baselines.masks_at(method, importance, fraction, min_channels,
                                     channel_multiple)
  return c2s2.nnx.compact(model, graph, masks), masks
