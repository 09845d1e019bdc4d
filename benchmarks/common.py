"""Pieces the benchmarks share: models on random data, jitted train steps, entries.

Weights are random (`init_variables`) and batches random uint8 images: the timings
depend on shapes, not values.

Builders are cached per process, so benchmarks that compare against the same dense
step (the mask computation, the input pipeline, the references) compile it once.
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from configs import base
from train import methods, models, optim, steps
from train.state import TrainState

# Pixel statistics of the random uint8 batches (the steps standardise inside).
MEAN, STD = np.float32(120), np.float32(60)
TOTAL_STEPS = 1000  # Schedules of the timed steps (dynamic CCI anneals over 30%).
Entry = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Bench:
  """A model, its initial variables and one random batch on the data mesh."""
  model: nn.Module
  variables: Any
  mesh: Mesh
  batch: dict[str, jax.Array]


def config(method: str = 'none') -> ml_collections.ConfigDict:
  """The base config (its optimiser) with `sparsity.method` set."""
  cfg = base.get_base_config()
  cfg.sparsity.method = method
  return cfg


def bench(model_name: str, batch_size: int, image_size: int = 32, num_classes: int = 10,
          conv_impl: str = 'auto') -> Bench:
  """Model `model_name` with random initial variables and a random uint8 batch."""
  return _bench(model_name, batch_size, image_size, num_classes, conv_impl)


@functools.lru_cache(maxsize=None)  # Positional arguments only: one key per setting.
def _bench(model_name: str, batch_size: int, image_size: int, num_classes: int,
           conv_impl: str) -> Bench:
  model = models.build_model(model_name, num_classes, conv_impl=conv_impl)
  variables = _variables(model_name, image_size, num_classes)
  mesh = steps.make_mesh()
  rng = np.random.default_rng(0)
  batch = steps.to_global({
      'image': rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
  return Bench(model, variables, mesh, batch)


def init_variables(model: nn.Module, image_size: int, seed: int = 0) -> Any:
  """Variables of `model` filled by numpy: kernels He-normal (fan out), norm scales
  and variances 1, the rest 0.

  The timed programs do not depend on the values, and XLA:CPU takes about a second to
  compile each truncated-normal initialiser of `model.init`.
  """
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> jax.Array:
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      fan_out = leaf.shape[-1] * math.prod(leaf.shape[:-2])
      value = rng.normal(0.0, math.sqrt(2.0 / fan_out), leaf.shape)
    else:
      value = np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def _variables(model_name: str, image_size: int, num_classes: int) -> Any:
  """Initial variables (the same for every `conv_impl`), made once."""
  return init_variables(models.build_model(model_name, num_classes), image_size)


def runner(step: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]], state: Any,
           batch: Any) -> Callable[[], jax.Array]:
  """A call running `step` on `batch` from the state it last left (steps donate it)."""
  holder = {'state': state}

  def run() -> jax.Array:
    holder['state'], metrics = step(holder['state'], batch)
    return metrics['loss']

  return run


def fresh(tree: Any) -> Any:
  """Own copies of the arrays of `tree`: a donated state must not alias another."""
  return jax.tree.map(jnp.copy, tree)


def train_step(model_name: str, batch_size: int, image_size: int = 32,
               method: str = 'none', num_classes: int = 10,
               conv_impl: str = 'auto') -> Callable[[], jax.Array]:
  """One jitted training step of train/steps.py with CCI `method` ('none': dense).

  Cached: every caller with the same arguments shares one compiled step and state.
  """
  return _train_step(model_name, batch_size, image_size, method, num_classes, conv_impl)


@functools.lru_cache(maxsize=None)
def _train_step(model_name: str, batch_size: int, image_size: int, method: str,
                num_classes: int, conv_impl: str) -> Callable[[], jax.Array]:
  b = bench(model_name, batch_size, image_size, num_classes, conv_impl)
  cfg = config(method)
  schedule = optim.make_schedule(cfg.optimizer, TOTAL_STEPS, 100)
  built = methods.build(cfg, optim.make_optimizer(cfg.optimizer, schedule),
                        b.variables['params'], total_steps=TOTAL_STEPS)
  step = steps.make_train_step(b.model, built, schedule, MEAN, STD, b.mesh)
  state = jax.device_put(TrainState.create(fresh(b.variables), built.tx),
                         steps.replicated(b.mesh))
  return runner(step, state, b.batch)


def entry(name: str, seconds: float, baseline: str, baseline_seconds: float,
          target: float | None, **extra: Any) -> Entry:
  """A result: `ratio` is seconds / baseline_seconds; it passes at or below `target`."""
  return {'name': name, 'seconds': seconds, 'baseline': baseline,
          'baseline_seconds': baseline_seconds, 'ratio': seconds / baseline_seconds,
          'target': target, **extra}


def px(image_size: int) -> str:
  """Name suffix for a model run at other than its native CIFAR size."""
  return '' if image_size == 32 else f'_{image_size}px'
