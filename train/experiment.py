"""Builds an experiment from its config: data, model, optimiser, state, steps.

`train.loop` calls `build` first: every check of the config happens here, before the
first training step, and names the key at fault.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

import cci
from train import checkpoints, data, methods, model_setup, models, optim, steps, tasks
from train import workdir as workdir_lib
from train.models import stats
from train.state import TrainState



@dataclasses.dataclass
class Experiment:
  """Everything the loop needs, derived once from the config."""
  config: ml_collections.ConfigDict
  dataset: data.ImageDataset
  model: Any
  widths: dict[str, int]
  variables: Any  # Shapes and dtypes of the model's variables (no values).
  mesh: jax.sharding.Mesh
  schedule: optax.Schedule
  method: methods.Method
  steps_per_epoch: int
  total_steps: int
  task: tasks.Task = tasks.CLASSIFICATION


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values the lock on the config cannot; raises ValueError naming the key."""
  choices = {
      'data.source': (config.data.source, data.SOURCES),
      'model.dtype': (config.model.dtype, tuple(model_setup.DTYPES)),
      'model.conv_impl': (config.model.conv_impl, models.common.CONV_IMPLS),
      'on_nonfinite': (config.on_nonfinite, ('stop', 'skip')),
      'optimizer.schedule': (config.optimizer.schedule, optim.SCHEDULES),
      'sparsity.method': (config.sparsity.method, ('none', *cci.METHODS)),
      'channel_pruning.method': (config.channel_pruning.method,
                                 ('none', 'c2s2', 'l1_filter', 'slimming')),
  }
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise ValueError(f'config.{key}={value!r}; choose one of {allowed}.')
  positive = ('batch_size', 'eval_batch_size', 'log_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints')
  for key in positive:
    if config[key] <= 0:
      raise ValueError(f'config.{key} must be > 0, got {config[key]}.')
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % jax.device_count():
      raise ValueError(
          f'config.{key}={config[key]} must be divisible by the number of devices '
          f'({jax.device_count()}).')


def resolve_widths(config: ml_collections.ConfigDict, workdir: str,
                   num_classes: int) -> dict[str, int]:
  """Default widths, then a widths file saved in the workdir, then `model.widths`."""
  saved = workdir_lib.read_record(os.path.join(workdir, workdir_lib.WIDTHS_FILE))
  if saved is None:  # Missing or damaged: the kernels of a checkpoint say the same.
    saved = checkpoints.saved_widths(
        os.path.join(workdir, workdir_lib.CHECKPOINT_DIR),
        models.default_widths(config.model.name, num_classes, config.model.shortcut))
  return model_setup.config_widths(
      config, num_classes, models.load_widths(json.dumps(saved)) if saved else None)


def build(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """Loads the data and builds the model, optimiser and sharding for `config`."""
  validate(config)
  dataset = data.load_dataset(config.data)
  widths = resolve_widths(config, workdir, dataset.num_classes)
  model = model_setup.build_model(config, dataset.num_classes, widths)
  per_epoch = data.steps_per_epoch(len(dataset.train), config.batch_size)
  total = optim.num_train_steps(config, per_epoch)
  schedule = optim.make_schedule(config.optimizer, total, per_epoch)
  variables = model_setup.abstract_variables(model, dataset.image_shape)
  method = methods.build(config, optim.make_optimizer(config.optimizer, schedule),
                         variables['params'], total)
  return Experiment(
      config=config, dataset=dataset, model=model, widths=widths,
      variables=variables, mesh=steps.make_mesh(), schedule=schedule, method=method,
      steps_per_epoch=per_epoch, total_steps=total,
      task=tasks.task_for(dataset, config.data.class_weights,
                          config.data.label_smoothing))


def abstract_state(exp: Experiment) -> TrainState:
  """Shapes and dtypes of the train state, without computing it."""
  return jax.eval_shape(lambda v: TrainState.create(v, exp.method.tx), exp.variables)


def init_state(exp: Experiment) -> TrainState:
  """Initial state from `config.seed`, or from `config.init_from`; replicated."""
  loaded = None
  if exp.config.init_from:
    loaded = checkpoints.load_variables(exp.config.init_from, exp.variables)

  def init(loaded):
    variables = loaded or model_setup.init_variables(exp.model, exp.dataset.image_shape,
                                                     exp.config.seed)
    return TrainState.create(variables, exp.method.tx)

  return jax.jit(init, out_shardings=steps.replicated(exp.mesh))(loaded)


def evaluate(exp: Experiment, state: Any, eval_step) -> dict[str, float]:
  """`tasks.summarize` over the whole test split (padded last batch masked)."""
  return evaluate_source(exp.dataset.test, exp.config.eval_batch_size, exp.mesh, state,
                         eval_step, exp.dataset.class_names)


def evaluate_source(source: data.Source, batch_size: int, mesh: jax.sharding.Mesh,
                    state: Any, eval_step, class_names=()) -> dict[str, float]:
  """Top-1 and mean loss (and mIoU, per-class IoU for segmentation; see
  `tasks.summarize`) of `eval_step` over every example of `source`."""
  totals = None
  for batch in data.eval_batches(
      source, batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count()):
    out = eval_step(state, steps.to_global(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return tasks.summarize(jax.device_get(totals), class_names)


def model_size(exp: Experiment) -> dict[str, int]:
  """Parameters and MACs per example of this model and of its default-width twin."""
  shape = (1, *exp.dataset.image_shape)
  dense_model = models.build_model(
      exp.config.model.name, exp.dataset.num_classes,
      shortcut=exp.config.model.shortcut)
  sizes = {}
  for key, model, variables in (
      ('', exp.model, exp.variables),
      ('_dense', dense_model,
       model_setup.abstract_variables(dense_model, exp.dataset.image_shape))):
    sizes['params' + key] = stats.count_params(variables['params'])
    sizes['macs' + key] = stats.total_macs(stats.layer_stats(model, variables, shape))
  return sizes


def write_widths(exp: Experiment, workdir: str) -> None:
  if jax.process_index() == 0:
    models.save_widths(os.path.join(workdir, workdir_lib.WIDTHS_FILE), exp.widths)
