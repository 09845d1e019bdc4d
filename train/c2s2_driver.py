"""C2S2's progressive layer-wise selection around the training steps (METHODS.md 2.2).

Units of `layers_per_step` channel groups are processed input to output: phase 1 trains
the unit's pruning scales with the L1 proximal step, binarisation fixes the mask, phase 2
fine-tunes, the cost check compares the held-out `cost_metric` (top-1, or mIoU for
segmentation) with the pre-trained reference and
restores channels (or halves lambda and redoes phase 1), and surgery removes the pruned
channels. Everything lives in `workdir/selection/`: orbax checkpoints whose JSON record
holds the driver's position (unit, phase, retry, lambdas, widths, decisions), so a killed
run resumes inside a phase. The compact model then goes through the ordinary training
loop (the final fine-tune) with `config.init_from` pointing at the selection.
"""

import dataclasses
import json
import os
import re
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from c2s2 import graph as graph_lib
from c2s2 import selection, surgery
from train import checkpoints, data, experiment, metrics, models, optim, steps, tasks
from train import workdir as workdir_lib
from train.models import stats

DECISIONS_FILE = workdir_lib.DECISIONS_FILE
PHASES = ('phase1', 'phase2')


@flax.struct.dataclass
class SelectionState:
  """The train state during selection: model variables plus the active pruning layers.

  Attributes:
    scales, importance, masks: group name -> (C,) arrays of the unit being selected:
      the pruning layer's real scale, the accumulated |scale| of phase 1 (the order in
      which pruned channels are restored) and the binary mask of phase 2.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  scales: dict[str, jax.Array]
  importance: dict[str, jax.Array]
  masks: dict[str, jax.Array]
  first_nonfinite_step: jax.Array
  nonfinite_steps: jax.Array


@dataclasses.dataclass
class Setup:
  """What selection derives once from the config."""
  config: ml_collections.ConfigDict
  dataset: data.ImageDataset  # Its held_out split is the cost check's.
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation  # The weights' optimiser during selection.
  steps_per_epoch: int
  phase_steps: dict[str, int]
  original_widths: dict[str, int]
  units: list[list[str]]
  lambdas: dict[str, float]  # Per group: lambda_l1 times its cost weight.
  task: tasks.Task = tasks.CLASSIFICATION


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                widths: dict[str, int]) -> Any:
  return models.build_model(config.model.name, num_classes, widths=widths,
                            dtype=experiment.DTYPES[config.model.dtype],
                            shortcut=config.model.shortcut,
                            conv_impl=config.model.conv_impl)


def trace_graph(model: Any, image_shape: tuple[int, ...],
                variables: Any = None) -> graph_lib.ChannelGraph:
  """The channel graph of `model` (`variables`: its abstract variables, if at hand)."""
  if variables is None:
    variables = experiment.abstract_variables(model, image_shape)
  if hasattr(model, 'conv_impl'):  # Same parameters; the graph reads plain convs.
    model = model.clone(conv_impl='xla')
  return graph_lib.trace_channel_graph(
      lambda v, x: model.apply(v, x, train=False), variables,
      jnp.zeros((1, *image_shape), model.dtype))


def candidate_groups(graph: graph_lib.ChannelGraph, cp: ml_collections.ConfigDict,
                     where: str = 'config.channel_pruning') -> list[str]:
  """Names of the groups to select from, in execution order (METHODS.md 2.1 policy).

  Logs every group with the reason it is or is not selected. `cp` has the keys
  include, exclude and prune_residual_stream; `where` names them in errors.

  Raises:
    ValueError: `include` or `prune_residual_stream` asks for a group the graph cannot
      prune, or nothing is left to prune (names the keys and the group).
  """
  chosen, rows = [], []
  for group in graph.groups:
    if cp.include and not re.search(cp.include, group.name):
      why = 'not matched by include'
    elif cp.exclude and re.search(cp.exclude, group.name):
      why = 'excluded'
    elif group.joined and not cp.prune_residual_stream:
      why = 'residual stream (prune_residual_stream=False)'
    elif not group.prunable:
      if cp.include or group.joined:
        key = 'include' if cp.include else 'prune_residual_stream'
        raise ValueError(
            f'{where}.{key} selects {group.name}, whose channels cannot '
            f'be removed: {group.reason}. (A CIFAR ResNet with model.shortcut=A zero-pads '
            'its residual stream; use shortcut B.)')
      why = f'not prunable: {group.reason}'
    else:
      why = 'selected'
      chosen.append(group.name)
    rows.append(f'  {group.name:<32}{group.size:>6}  {why}')
  if jax.process_index() == 0:
    logging.info('C2S2 channel groups:\n%s', '\n'.join(rows))
  if not chosen:
    raise ValueError(f'{where} selects no prunable channel group (check '
                     f'include={cp.include!r}, exclude={cp.exclude!r}); prunable: '
                     f'{[g.name for g in graph.prunable()]}.')
  return chosen


def model_macs(config, num_classes, widths, image_shape) -> int:
  model = build_model(config, num_classes, widths)
  return stats.total_macs(stats.layer_stats(
      model, experiment.abstract_variables(model, image_shape), (1, *image_shape)))


def _with_width(widths: dict[str, int], group: graph_lib.ChannelGroup,
                width: int) -> dict[str, int]:
  return {**widths, **{p: width for p in group.producers if p in widths}}


def check_target(config, num_classes, image_shape, graph, names) -> None:
  """Fails before training if `target_macs_ratio` is below what pruning can reach."""
  cp = config.channel_pruning
  if cp.target_macs_ratio <= 0:
    return
  widths = models.default_widths(config.model.name, num_classes, config.model.shortcut)
  widths.update(models.load_widths(config.model.widths))
  smallest = dict(widths)
  for name in names:
    smallest = _with_width(smallest, graph.group(name), cp.min_channels)
  reachable = (model_macs(config, num_classes, smallest, image_shape)
               / model_macs(config, num_classes, widths, image_shape))
  if cp.target_macs_ratio < reachable:
    raise ValueError(
        f'config.channel_pruning.target_macs_ratio={cp.target_macs_ratio} cannot be '
        f'met: with min_channels={cp.min_channels} in every selected group the MACs '
        f'ratio is at least {reachable:.3f}.')


def validate(config: ml_collections.ConfigDict, train_size: int) -> None:
  cp = config.channel_pruning
  if not config.init_from:
    raise ValueError('config.channel_pruning.method=c2s2 prunes a pre-trained model: set '
                     'config.init_from to the workdir of a dense run.')
  if config.sparsity.method != 'none':
    raise ValueError('config.channel_pruning and config.sparsity cannot be combined.')
  selection.decide(True, 0, 0, cp.on_over_budget)  # Validates the choice.
  for key in ('layers_per_step', 'min_channels', 'channel_multiple'):
    if cp[key] < 1:
      raise ValueError(f'config.channel_pruning.{key} must be >= 1, got {cp[key]}.')
  for key in ('phase1_epochs', 'phase2_epochs', 'scale_learning_rate', 'lambda_l1'):
    if cp[key] <= 0:
      raise ValueError(f'config.channel_pruning.{key} must be > 0, got {cp[key]}.')
  if cp.cost_metric not in tasks.COST_METRICS:
    raise ValueError(f'config.channel_pruning.cost_metric={cp.cost_metric!r}; choose one '
                     f'of {tasks.COST_METRICS}.')
  if cp.max_retries < 0 or cp.epsilon < 0:
    raise ValueError('config.channel_pruning.max_retries and epsilon must be >= 0.')
  if config.data.held_out <= 0:
    raise ValueError('config.data.held_out must be > 0: the cost check evaluates those '
                     'training images (METHODS.md 4: 5,000).')
  if train_size < config.batch_size:
    raise ValueError(f'config.data.held_out={config.data.held_out} leaves {train_size} '
                     f'training examples, fewer than one batch of {config.batch_size}.')
  _warn_if_reference_saw_held_out(config)


def _warn_if_reference_saw_held_out(config: ml_collections.ConfigDict) -> None:
  path = os.path.join(config.init_from, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return
  trained = workdir_lib.read_json(path).get('data', {}).get('held_out', 0)
  if trained != config.data.held_out:
    logging.warning(
        'The pre-trained run %s used data.held_out=%s, this run %s: it trained on '
        'images of the held-out split, so its reference cost is optimistic and the cost '
        'check will restore more channels. Pre-train with the same data.held_out.',
        config.init_from, trained, config.data.held_out)


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  """Data split, candidate units and lambdas; every check before any training step."""
  cp = config.channel_pruning
  experiment.validate(config)
  dataset = data.load_dataset(config.data)
  validate(config, len(dataset.train))
  if cp.cost_metric == 'miou' and dataset.ignore_label is None:
    raise ValueError("config.channel_pruning.cost_metric='miou' needs segmentation data "
                     f"(data.source seg_*), not data.source={config.data.source!r}.")
  widths = models.default_widths(config.model.name, dataset.num_classes,
                                 config.model.shortcut)
  widths.update(models.load_widths(config.model.widths))
  model = build_model(config, dataset.num_classes, widths)
  variables = experiment.abstract_variables(model, dataset.image_shape)
  graph = trace_graph(model, dataset.image_shape, variables)
  names = candidate_groups(graph, cp)
  params = variables['params']
  unfoldable = [n for n in names if not surgery.foldable(params, graph.group(n))]
  if unfoldable:
    raise ValueError(
        f'C2S2 cannot fold a pruning layer into every site of {unfoldable} (a site '
        'needs a norm scale or a conv/dense kernel to carry the kept scales after '
        'surgery); leave them out with config.channel_pruning.exclude.')
  check_target(config, dataset.num_classes, dataset.image_shape, graph, names)
  weights = {n: 1.0 for n in names}
  if cp.cost_weighting:
    full = model_macs(config, dataset.num_classes, widths, dataset.image_shape)
    per_channel = {}
    for n in names:
      group = graph.group(n)
      less = _with_width(widths, group, group.size - 1)
      per_channel[n] = full - model_macs(config, dataset.num_classes, less,
                                         dataset.image_shape)
    weights = selection.cost_weights(per_channel)
  per_epoch = data.steps_per_epoch(len(dataset.train), config.batch_size)
  step = cp.layers_per_step
  return Setup(
      config=config, dataset=dataset,
      mesh=steps.make_mesh(),
      tx=optim.make_optimizer(config.optimizer,
                              optax.constant_schedule(cp.weight_learning_rate)),
      steps_per_epoch=per_epoch,
      phase_steps={'phase1': max(1, round(cp.phase1_epochs * per_epoch)),
                   'phase2': max(1, round(cp.phase2_epochs * per_epoch))},
      original_widths=widths,
      units=[names[i:i + step] for i in range(0, len(names), step)],
      lambdas={n: cp.lambda_l1 * w for n, w in weights.items()},
      task=tasks.task_for(dataset, config.data.class_weights))


def make_train_step(setup: Setup, model: Any, graph, phase: str, lambdas: dict[str, float]):
  """The jitted step of `phase` for the unit whose scales the state holds."""
  cp, mean, std = setup.config.channel_pruning, setup.dataset.mean, setup.dataset.std
  freeze_weights = phase == 'phase1' and not cp.train_weights_in_phase1

  def loss_fn(params, scales, state, batch):
    images = steps.normalize(batch['image'], mean, std, model.dtype)
    masks = state.masks if phase == 'phase2' else None
    # The unit's pruning layers folded into their sites' parameters: the function of
    # `c2s2.pruning_layers` without a pass over the activations (`make_setup` checked
    # that every candidate group folds).
    forward = surgery.fold_scales(params, graph, scales, masks)
    logits, updates = model.apply(
        {'params': forward, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'])
    loss = setup.task.loss(logits, batch['label'])
    return loss, (logits, updates['batch_stats'])

  def step(state: SelectionState, batch):
    (loss, (logits, batch_stats)), (grads, scale_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, state.scales, state, batch)
    params, opt_state = state.params, state.opt_state
    if not freeze_weights:
      updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    importance = state.importance
    if phase == 'phase1':
      scales = {n: selection.proximal_sgd_step(s, scale_grads[n], cp.scale_learning_rate,
                                               lambdas[n])
                for n, s in state.scales.items()}
      importance = {n: importance[n] + jnp.abs(scales[n]) for n in scales}
    else:  # Pruned scales get no gradient through the fixed mask and stay 0.
      scales = {n: s - cp.weight_learning_rate * scale_grads[n]
                for n, s in state.scales.items()}
    grad_norm = optax.tree.norm((grads, scale_grads))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state), scales=keep(scales, state.scales),
        importance=keep(importance, state.importance),
        first_nonfinite_step=jnp.where(~finite & (state.first_nonfinite_step < 0),
                                       state.step, state.first_nonfinite_step),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    nonzero = sum(jnp.sum(s != 0) for s in new_state.scales.values())
    return new_state, {
        'loss': loss, 'accuracy': setup.task.accuracy(logits, batch['label']),
        'learning_rate': jnp.asarray(cp.weight_learning_rate),
        'kept_fraction': nonzero / sum(s.size for s in new_state.scales.values())}

  rep, dat = steps.replicated(setup.mesh), steps.data_sharded(setup.mesh)
  return jax.jit(step, in_shardings=(rep, dat), out_shardings=(rep, rep),
                 donate_argnums=0)


def make_eval_step(setup: Setup, model: Any, graph, binary: bool):
  mean, std = setup.dataset.mean, setup.dataset.std

  def step(state: SelectionState, batch):
    images = steps.normalize(batch['image'], mean, std, model.dtype)
    forward = surgery.fold_scales(state.params, graph, state.scales,
                                  state.masks if binary else None)
    logits = model.apply({'params': forward, 'batch_stats': state.batch_stats},
                         images, train=False)
    return setup.task.eval_sums(logits, batch['label'], batch['mask'])

  rep, dat = steps.replicated(setup.mesh), steps.data_sharded(setup.mesh)
  return jax.jit(step, in_shardings=(rep, dat), out_shardings=rep)


def with_unit(state: SelectionState, graph, unit: list[str]) -> SelectionState:
  """`state` with fresh pruning layers (scale 1) for the groups of `unit`."""
  sizes = {n: graph.group(n).size for n in unit}  # Distinct buffers (donated).
  return state.replace(scales={n: jnp.ones(c) for n, c in sizes.items()},
                       masks={n: jnp.ones(c) for n, c in sizes.items()},
                       importance={n: jnp.zeros(c) for n, c in sizes.items()})


def initial_state(variables: Any, tx: optax.GradientTransformation) -> SelectionState:
  return SelectionState(
      step=jnp.zeros((), jnp.int32), params=variables['params'],
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(variables['params']),
      scales={}, importance={}, masks={}, first_nonfinite_step=jnp.full((), -1, jnp.int32),
      nonfinite_steps=jnp.zeros((), jnp.int32))


def operate(state: SelectionState, graph, masks: dict[str, np.ndarray]) -> SelectionState:
  """Surgery: folds the unit's scales, removes its pruned channels, drops its layers."""
  params = state.params
  for name, mask in masks.items():
    params = surgery.fold_scale(params, graph.group(name), state.scales[name] * mask)
  variables = {'params': params, 'batch_stats': state.batch_stats}
  removal = surgery.plan(graph, masks, variables)
  sliced = surgery.slice_variables(variables, removal)
  return state.replace(
      params=sliced['params'], batch_stats=sliced['batch_stats'],
      opt_state=surgery.slice_params_like(state.opt_state, state.params, removal),
      scales={}, importance={}, masks={})


class Interrupted(Exception):
  """Selection reached `stop_at_step` (a simulated interruption, for tests)."""


class Driver:
  """Runs (or resumes) the selection of one workdir; `run` returns the final widths."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               stop_at_step: int | None = None):
    self.setup = make_setup(config)
    self.stop_at_step = stop_at_step
    self.config, self.cp = config, config.channel_pruning
    self.directory = os.path.join(workdir, workdir_lib.SELECTION_DIR)
    self.workdir = workdir
    self.ckpt = checkpoints.Checkpointer(os.path.join(self.directory, 'checkpoints'),
                                         config.keep_checkpoints)
    self.unit_start = checkpoints.Checkpointer(
        os.path.join(self.directory, 'unit_start'), 1)

  # Position and state -------------------------------------------------------------

  def _model(self, widths):
    model = build_model(self.config, self.setup.dataset.num_classes, widths)
    return model, trace_graph(model, self.setup.dataset.image_shape)

  def _abstract(self, pos) -> SelectionState:
    model, graph = self._model(pos['widths'])
    variables = experiment.abstract_variables(model, self.setup.dataset.image_shape)

    def make():
      state = initial_state(variables, self.setup.tx)
      if pos['unit'] < len(self.setup.units) and pos['phase'] in PHASES:
        state = with_unit(state, graph, self.setup.units[pos['unit']])
      return state

    return checkpoints.abstract_like(jax.eval_shape(make),
                                     steps.replicated(self.setup.mesh))

  def _start(self):
    """Position and state at the beginning: the pre-trained model and its reference."""
    model, graph = self._model(self.setup.original_widths)
    variables = checkpoints.load_variables(
        self.config.init_from,
        experiment.abstract_variables(model, self.setup.dataset.image_shape))
    state = steps.replicate(initial_state(variables, self.setup.tx), self.setup.mesh)
    reference = self._evaluate(model, graph, state, binary=False)
    logging.info('C2S2: pre-trained held-out %s %.4f, loss %.4f (reference).',
                 self.cp.cost_metric, reference[self.cp.cost_metric], reference['loss'])
    pos = {'unit': 0, 'phase': 'start', 'phase_start': 0, 'retry': 0,
           'lambdas': self.setup.lambdas, 'widths': self.setup.original_widths,
           'reference': reference, 'decisions': [], 'finished': False}
    return pos, state

  def _save(self, pos, state) -> None:
    checkpoints.check_finite(state, self.config.on_nonfinite, self.ckpt)
    self.ckpt.save(int(state.step), state, pos)
    self.ckpt.wait()
    if jax.process_index() == 0:
      text = ''.join(json.dumps(d, sort_keys=True) + '\n' for d in pos['decisions'])
      path = os.path.join(self.workdir, DECISIONS_FILE)
      with open(path + '.tmp', 'w') as f:
        f.write(text)
      os.replace(path + '.tmp', path)

  def _evaluate(self, model, graph, state, binary: bool) -> dict[str, float]:
    step = make_eval_step(self.setup, model, graph, binary)
    return experiment.evaluate_source(self.setup.dataset.held_out, self.config.eval_batch_size,
                                      self.setup.mesh, state, step,
                                      self.setup.dataset.class_names)

  # The schedule -------------------------------------------------------------------

  def run(self) -> dict[str, int]:
    restored = self.ckpt.restore_latest(self._abstract)  # Damaged ones moved aside.
    if restored is None:
      pos, state = self._start()
    else:
      latest, state, pos = restored
      logging.info('C2S2: resuming at step %d (unit %d, %s).', latest, pos['unit'],
                   pos['phase'])
    try:
      while not pos['finished']:
        pos, state = self._advance(pos, state)
    finally:
      self.ckpt.wait()
      self.ckpt.close()
      self.unit_start.close()
    return pos['widths']

  def _advance(self, pos, state):
    """One move of the schedule: start a unit, run a phase, or decide after phase 2.

    Each move saves one checkpoint at the step it ends on (never two at one step), with
    the position to continue from in its JSON record.
    """
    units = self.setup.units
    model, graph = self._model(pos['widths'])
    if pos['phase'] == 'start':
      ratio = self._macs_ratio(pos['widths'])
      if pos['unit'] >= len(units) or (self.cp.target_macs_ratio > 0
                                       and ratio <= self.cp.target_macs_ratio):
        pos = {**pos, 'finished': True}
        self._save(pos, state)
        return pos, state
      if self.unit_start.latest_step() != int(state.step):
        self.unit_start.save(int(state.step), state, pos)
        self.unit_start.wait()
      state = steps.replicate(with_unit(state, graph, units[pos['unit']]), self.setup.mesh)
      pos = {**pos, 'phase': 'phase1', 'phase_start': int(state.step), 'retry': 0}
      self._save(pos, state)
      return pos, state
    state = self._train_phase(pos, state, model, graph)
    if pos['phase'] == 'phase1':
      state = self._binarize(state)
      pos = {**pos, 'phase': 'phase2', 'phase_start': int(state.step)}
      self._save(pos, state)
      return pos, state
    return self._check(pos, state, model, graph)

  def _binarize(self, state):
    masks = {}
    for name, scale in state.scales.items():
      importance = np.asarray(state.importance[name])
      mask = selection.binarize(np.asarray(scale), importance, self.cp.min_channels)
      masks[name] = selection.round_up(mask, importance, self.cp.channel_multiple)
    return self._set_masks(state, masks)

  def _set_masks(self, state, masks: dict[str, np.ndarray]):
    """Fixes the binary masks; kept channels whose scale is 0 (restored) get scale 1."""
    scales = {n: jnp.where(jnp.asarray(masks[n]) & (state.scales[n] == 0), 1.0,
                           state.scales[n] * masks[n]) for n in masks}
    return steps.replicate(
        state.replace(scales=scales,
                      masks={n: jnp.asarray(m, jnp.float32) for n, m in masks.items()}),
        self.setup.mesh)

  def _train_phase(self, pos, state, model, graph):
    phase, start = pos['phase'], pos['phase_start']
    end = start + self.setup.phase_steps[phase]
    lambdas = {n: pos['lambdas'][n] for n in state.scales}
    step_fn = make_train_step(self.setup, model, graph, phase, lambdas)
    batches = data.train_batches(
        self.setup.dataset.train, batch_size=self.config.batch_size, seed=self.config.seed,
        start_step=int(state.step), crop_padding=self.config.data.crop_padding,
        flip=self.config.data.flip, process_index=jax.process_index(),
        process_count=jax.process_count())
    pending, tick = [], time.time()
    for done in range(int(state.step) + 1, end + 1):
      state, values = step_fn(state, steps.to_global(next(batches), self.setup.mesh))
      pending.append(values)
      if done % self.config.log_every_steps == 0 or done == end:
        mean = experiment.host_metrics(pending)
        rate = len(pending) * self.config.batch_size / max(time.time() - tick, 1e-9)
        pending, tick = [], time.time()
        logging.info('C2S2 unit %d %s: %s | channels kept %.3f', pos['unit'], phase,
                     metrics.progress_line(done, end, mean, rate,
                                           (end - done) * self.config.batch_size / rate),
                     mean['kept_fraction'])
      if done % self.config.checkpoint_every_steps == 0 and done < end:
        self._save(pos, state)
      if done == self.stop_at_step:
        batches.close()
        raise Interrupted(done)
    batches.close()
    return state

  def _unit_start_state(self, pos, state: SelectionState) -> SelectionState:
    """The state saved when the unit began (weights, statistics, optimiser state, no
    pruning layers), at `state`'s step so that batches keep following the step."""
    saved, _ = self.unit_start.restore(self.unit_start.latest_step(),
                                       self._abstract({**pos, 'phase': 'start'}))
    return saved.replace(step=state.step,
                         first_nonfinite_step=state.first_nonfinite_step,
                         nonfinite_steps=state.nonfinite_steps)

  def _macs_ratio(self, widths) -> float:
    n, shape = self.setup.dataset.num_classes, self.setup.dataset.image_shape
    return (model_macs(self.config, n, widths, shape)
            / model_macs(self.config, n, self.setup.original_widths, shape))

  def _check(self, pos, state, model, graph):
    """The cost check after phase 2, then surgery or a retry."""
    cost = self._evaluate(model, graph, state, binary=True)
    masks = {n: np.asarray(m) > 0 for n, m in jax.device_get(state.masks).items()}
    metric = self.cp.cost_metric
    action = selection.decide(
        selection.within_budget(pos['reference'], cost, self.cp.epsilon, metric),
        pos['retry'], self.cp.max_retries, self.cp.on_over_budget)
    record = {'unit': pos['unit'], 'retry': pos['retry'], 'action': action,
              'step': int(state.step), 'reference': pos['reference'], 'cost': cost,
              'layers': {n: {'lambda': pos['lambdas'][n], 'channels': int(m.size),
                             'kept': int(m.sum())} for n, m in masks.items()}}
    logging.info('C2S2 unit %d: held-out %s %.4f (reference %.4f), kept %s: %s.',
                 pos['unit'], metric, cost[metric], pos['reference'][metric],
                 {n: f'{m.sum()}/{m.size}' for n, m in masks.items()}, action)
    decisions = pos['decisions'] + [record]
    if action == 'restore':
      importance = jax.device_get(state.importance)
      masks = {n: selection.round_up(
          selection.restore(m, importance[n], -(-int((~m).sum()) // 2)), importance[n],
          self.cp.channel_multiple) for n, m in masks.items()}
      state = self._set_masks(state, masks)
      pos = {**pos, 'phase_start': int(state.step), 'retry': pos['retry'] + 1,
             'decisions': decisions}
    elif action == 'halve_lambda':
      state = steps.replicate(
          with_unit(self._unit_start_state(pos, state), graph, list(state.scales)),
          self.setup.mesh)
      lambdas = {**pos['lambdas'], **{n: pos['lambdas'][n] / 2 for n in masks}}
      pos = {**pos, 'phase': 'phase1', 'phase_start': int(state.step),
             'retry': pos['retry'] + 1, 'lambdas': lambdas, 'decisions': decisions}
    else:
      if action == 'give_up':  # The unit as it started: every channel, its weights.
        state = steps.replicate(self._unit_start_state(pos, state), self.setup.mesh)
      else:
        state = steps.replicate(operate(jax.device_get(state), graph, masks),
                                self.setup.mesh)
      widths = models.kernel_widths(state.params, pos['widths'])
      record['macs_ratio'] = self._macs_ratio(widths)
      # Saved by the next unit's start, at this same step.
      return {**pos, 'unit': pos['unit'] + 1, 'phase': 'start', 'retry': 0,
              'widths': widths, 'decisions': decisions}, state
    self._save(pos, state)
    return pos, state


def select(config: ml_collections.ConfigDict, workdir: str,
           stop_at_step: int | None = None) -> ml_collections.ConfigDict | None:
  """Runs or resumes selection; returns the config of the compact model's fine-tune.

  Writes the compact widths to `workdir/widths.json` (read by the experiment) and
  points `init_from` at the selection's final checkpoint. Returns None if selection
  stopped at `stop_at_step`.
  """
  directory = os.path.join(workdir, workdir_lib.SELECTION_DIR)
  try:
    widths = Driver(config, workdir, stop_at_step).run()
  except Interrupted:
    return None
  if jax.process_index() == 0:
    models.save_widths(os.path.join(workdir, experiment.WIDTHS_FILE), widths)
  finetune = ml_collections.ConfigDict(config.to_dict())
  finetune.init_from = directory
  finetune.model.widths = json.dumps(widths)
  finetune.lock()
  return finetune
