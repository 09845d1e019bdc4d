"""The train state: everything a checkpoint must hold to resume exactly."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Parameters, batch-norm statistics, optimiser state and step bookkeeping.

  Attributes:
    step: number of optimiser steps taken (skipped non-finite steps included).
    params: model parameters.
    batch_stats: batch-norm running statistics.
    opt_state: optax state.
    first_nonfinite_step: the first step whose loss or gradient was not finite,
      or -1. Such a step leaves params and optimiser state untouched.
    nonfinite_steps: how many steps were skipped for non-finite numbers.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  first_nonfinite_step: jax.Array
  nonfinite_steps: jax.Array

  @classmethod
  def create(cls, variables: Any, tx: optax.GradientTransformation) -> 'TrainState':
    params = variables['params']
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )

  @property
  def variables(self) -> dict[str, Any]:
    """The model variables for `model.apply`."""
    return {'params': self.params, 'batch_stats': self.batch_stats}
