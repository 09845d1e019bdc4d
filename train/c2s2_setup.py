"""What C2S2's selection derives once from the config, and each phase as a training method.

`make_setup` validates `config.channel_pruning`, traces the channel graph, picks the
candidate groups (`model_setup.candidate_groups`), checks that `target_macs_ratio` can be
met and weighs each group's lambda by its MACs per channel.
"""

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import optax
from absl import logging

from c2s2 import optim as c2s2_optim
from c2s2 import selection, surgery
from train import data, experiment, methods, model_setup, optim, steps, tasks
from train import workdir as workdir_lib
from train.state import TrainState

SCALES_KEY = c2s2_optim.SCALES_KEY


@dataclasses.dataclass
class Setup:
  """What selection derives once from the config."""
  config: ml_collections.ConfigDict
  dataset: data.ImageDataset  # Its held_out split is the cost check's.
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation  # The weights' optimiser during selection.
  schedule: optax.Schedule  # Its (constant) learning rate.
  steps_per_epoch: int
  phase_steps: dict[str, int]
  original_widths: dict[str, int]
  units: list[list[str]]
  lambdas: dict[str, float]  # Per group: lambda_l1 times its cost weight.
  task: tasks.Task = tasks.CLASSIFICATION


def validate(config: ml_collections.ConfigDict, train_size: int) -> None:
  cp = config.channel_pruning
  if not config.init_from:
    raise ValueError('config.channel_pruning.method=c2s2 prunes a pre-trained model: set '
                     'config.init_from to the workdir of a dense run.')
  if config.sparsity.method != 'none':
    raise ValueError('config.channel_pruning and config.sparsity cannot be combined.')
  selection.decide(True, 0, 0, cp.on_over_budget)  # Validates the choices.
  try:
    selection.unit_budget(cp.epsilon, 0, 1, cp.budget)
  except ValueError as e:
    raise ValueError(f'config.channel_pruning.{e}') from None
  if not 0 <= cp.target_tolerance < 1:
    raise ValueError('config.channel_pruning.target_tolerance must be in [0, 1), got '
                     f'{cp.target_tolerance}.')
  if cp.target_macs_ratio > 0 and cp.target_macs_ratio * (1 + cp.target_tolerance) >= 1:
    raise ValueError(
        f'config.channel_pruning.target_macs_ratio={cp.target_macs_ratio} is within '
        f'target_tolerance={cp.target_tolerance} of the unpruned model: selection would '
        'stop before its first unit.')
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


def check_target(config: ml_collections.ConfigDict, num_classes: int,
                 image_shape: tuple[int, ...], graph, names: list[str]) -> None:
  """Fails before training if `target_macs_ratio` is below what pruning can reach."""
  cp = config.channel_pruning
  if cp.target_macs_ratio <= 0:
    return
  widths = model_setup.config_widths(config, num_classes)
  smallest = dict(widths)
  for name in names:
    smallest = model_setup.with_width(smallest, graph.group(name), cp.min_channels)
  reachable = (model_setup.model_macs(config, num_classes, smallest, image_shape)
               / model_setup.model_macs(config, num_classes, widths, image_shape))
  if cp.target_macs_ratio < reachable:
    raise ValueError(
        f'config.channel_pruning.target_macs_ratio={cp.target_macs_ratio} cannot be '
        f'met: with min_channels={cp.min_channels} in every selected group the MACs '
        f'ratio is at least {reachable:.3f}.')


def make_setup(config: ml_collections.ConfigDict) -> Setup:
  """Data split, candidate units and lambdas; every check before any training step."""
  cp = config.channel_pruning
  experiment.validate(config)
  dataset = data.load_dataset(config.data)
  validate(config, len(dataset.train))
  if cp.cost_metric == 'miou' and dataset.ignore_label is None:
    raise ValueError("config.channel_pruning.cost_metric='miou' needs segmentation data "
                     f"(data.source seg_*), not data.source={config.data.source!r}.")
  widths = model_setup.config_widths(config, dataset.num_classes)
  model = model_setup.build_model(config, dataset.num_classes, widths)
  variables = model_setup.abstract_variables(model, dataset.image_shape)
  graph = model_setup.trace_graph(model, dataset.image_shape, variables)
  names = model_setup.candidate_groups(graph, cp)
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
    def macs(w):
      return model_setup.model_macs(config, dataset.num_classes, w, dataset.image_shape)
    full = macs(widths)
    weights = selection.cost_weights({
        n: full - macs(model_setup.with_width(widths, graph.group(n),
                                              graph.group(n).size - 1))
        for n in names})
  per_epoch = data.steps_per_epoch(len(dataset.train), config.batch_size)
  schedule = optax.constant_schedule(cp.weight_learning_rate)
  return Setup(
      config=config, dataset=dataset, mesh=steps.make_mesh(),
      tx=optim.make_optimizer(config.optimizer, schedule), schedule=schedule,
      steps_per_epoch=per_epoch,
      phase_steps={'phase1': max(1, round(cp.phase1_epochs * per_epoch)),
                   'phase2': max(1, round(cp.phase2_epochs * per_epoch))},
      original_widths=widths,
      units=selection.units(names, cp.layers_per_step),
      lambdas={n: cp.lambda_l1 * w for n, w in weights.items()},
      task=tasks.task_for(dataset, config.data.class_weights,
                          config.data.label_smoothing))


def selection_method(setup: Setup, graph, phase: str,
                     lambdas: dict[str, float]) -> methods.Method:
  """Phase `phase` of the unit whose scales the state holds, as a training method."""
  cp = setup.config.channel_pruning
  tx = c2s2_optim.selection_optimizer(
      setup.tx, phase, cp.scale_learning_rate, cp.weight_learning_rate, lambdas,
      train_weights=phase == 'phase2' or cp.train_weights_in_phase1)
  project = (c2s2_optim.proximal_l1(cp.scale_learning_rate, lambdas)
             if phase == 'phase1' else None)
  return methods.Method(tx, c2s2_optim.forward_params(graph, binary=phase == 'phase2'),
                        metrics=c2s2_optim.kept_fraction, project=project)


def make_train_step(setup: Setup, model, graph, phase: str, lambdas: dict[str, float]):
  """The jitted train step (`train.steps`) of `phase`."""
  return steps.make_train_step(model, selection_method(setup, graph, phase, lambdas),
                               setup.schedule, setup.dataset.mean, setup.dataset.std,
                               setup.mesh, setup.task)


def initial_state(setup: Setup, graph, variables: Any) -> TrainState:
  """The selection's train state: the model's parameters and no pruning layer."""
  return TrainState.create(
      {**variables, 'params': {**variables['params'], SCALES_KEY: {}}},
      selection_method(setup, graph, 'phase1', {}).tx)


def with_unit(state: TrainState, graph, unit: list[str]) -> TrainState:
  """`state` with fresh pruning layers (scale 1) for the groups of `unit`."""
  params, opt_state = c2s2_optim.with_unit(
      state.params, state.opt_state, {n: graph.group(n).size for n in unit})
  return state.replace(params=params, opt_state=opt_state)


def model_params(state: TrainState) -> dict[str, Any]:
  return {k: v for k, v in state.params.items() if k != SCALES_KEY}
