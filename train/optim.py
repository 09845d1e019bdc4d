"""Learning-rate schedules and the SGD optimiser, built from `config.optimizer`."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('step', 'cosine', 'constant')


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Total optimiser steps: `num_train_steps` if set, else `num_epochs` epochs."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  if config.num_epochs <= 0:
    raise ValueError(
        f'config.num_epochs must be > 0 (got {config.num_epochs}) unless '
        'config.num_train_steps is set.')
  return max(1, math.ceil(config.num_epochs * steps_per_epoch))


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Warm-up followed by a step, cosine or constant decay over `total_steps`."""
  if opt.schedule not in SCHEDULES:
    raise ValueError(
        f'config.optimizer.schedule={opt.schedule!r}; choose one of {SCHEDULES}.')
  warmup = min(round(opt.warmup_epochs * steps_per_epoch), total_steps - 1)
  decay_steps = total_steps - warmup
  if opt.schedule == 'step':
    if any(not 0.0 < b < 1.0 for b in opt.boundaries):
      raise ValueError('config.optimizer.boundaries must be fractions in (0, 1), '
                       f'got {tuple(opt.boundaries)}.')
    main = optax.piecewise_constant_schedule(
        opt.learning_rate,
        {round(b * total_steps) - warmup: opt.decay_factor
         for b in opt.boundaries})
  elif opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(opt.learning_rate, max(decay_steps, 1))
  else:
    main = optax.constant_schedule(opt.learning_rate)
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, opt.learning_rate, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def is_norm_scale(params):
  """True for every norm layer's `scale` leaf (batch, layer or group norm)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'scale', params)


def add_l1_subgradient(strength: float) -> optax.GradientTransformation:
  """Adds `strength * sign(w)` to the gradient: L1 on the weights it is applied to."""

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('add_l1_subgradient needs params in update().')
    return jax.tree.map(lambda g, w: g + strength * jnp.sign(w), updates, params), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(opt: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and coupled weight decay, as in PyTorch's SGD.

  `opt.norm_scale_l1 > 0` adds network slimming's sparsity term (Liu et al. 2017):
  L1 on every norm scale.
  """
  parts = [optax.add_decayed_weights(opt.weight_decay)]
  if opt.norm_scale_l1 < 0:
    raise ValueError(f'config.optimizer.norm_scale_l1={opt.norm_scale_l1} must be >= 0.')
  if opt.norm_scale_l1 > 0:
    parts.append(optax.masked(add_l1_subgradient(opt.norm_scale_l1), is_norm_scale))
  parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  return optax.chain(*parts)
