"""Learning-rate schedules and the SGD optimiser, built from `config.optimizer`."""

import math

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


def make_optimizer(opt: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and coupled weight decay, as in PyTorch's SGD."""
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
  )
