"""Jitted train and eval steps, data-parallel over every device via `jax.sharding`.

One code path serves 1..N devices and hosts: the state is replicated, the batch is
split along a 'data' mesh axis, and XLA inserts the gradient all-reduce. Batch-norm
statistics are computed over the global batch.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from train.methods import Method
from train.state import TrainState
from train.tasks import CLASSIFICATION, Task

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_mesh() -> Mesh:
  """A one-axis mesh over every device of every process.

  The axis is `Auto`: shardings are given at the step's boundary and XLA propagates
  them inside, so any model traces (explicit axes refuse reshapes such as VGG's
  max pool that cannot name the sharding of their output).
  """
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` replicated on every device of every process (its values the same in each).

  Unlike `jax.device_put`, takes leaves that live on one local device (e.g. fresh
  `jnp.ones`) in a multi-process job: each process supplies the whole value.
  """
  sharding = replicated(mesh)

  def put(leaf: Any) -> jax.Array:
    if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
      return leaf
    return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

  return jax.tree.map(put, tree)


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> Batch:
  """Assembles each process's slice of the batch into globally sharded arrays."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def normalize(images: jax.Array, mean: np.ndarray, std: np.ndarray,
              dtype: Any) -> jax.Array:
  """uint8 NHWC images to per-channel standardised floats."""
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def make_train_step(model: nn.Module, method: Method, schedule: optax.Schedule,
                    mean: np.ndarray, std: np.ndarray, mesh: Mesh,
                    task: Task = CLASSIFICATION
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Builds the jitted step: forward, backward, update (and the method's projection),
  non-finite guard."""
  tx = method.tx

  def loss_fn(params, state: TrainState, batch: Batch):
    images = normalize(batch['image'], mean, std, model.dtype)
    forward = method.forward_params(params, state.opt_state)
    logits, updates = model.apply(
        {'params': forward, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'])
    loss = task.loss(logits, batch['label'])
    return loss, (logits, updates['batch_stats'])

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if method.project is not None:
      params = method.project(params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        first_nonfinite_step=jnp.where(
            ~finite & (state.first_nonfinite_step < 0), state.step,
            state.first_nonfinite_step),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    )
    metrics = {
        'loss': loss,
        'accuracy': task.accuracy(logits, batch['label']),
        'grad_norm': grad_norm,
        'learning_rate': schedule(state.step),
    }
    if method.metrics is not None:
      metrics.update(method.metrics(new_state.params, new_state.opt_state))
    return new_state, metrics

  rep, data = replicated(mesh), data_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep),
                 donate_argnums=0)


def make_eval_step(model: nn.Module, method: Method, mean: np.ndarray,
                   std: np.ndarray, mesh: Mesh,
                   task: Task = CLASSIFICATION) -> Callable[[TrainState, Batch], Metrics]:
  """Builds the jitted eval step; returns sums so padded batches count exactly."""

  def step(state: TrainState, batch: Batch) -> Metrics:
    images = normalize(batch['image'], mean, std, model.dtype)
    params = method.forward_params(state.params, state.opt_state)
    logits = model.apply({'params': params, 'batch_stats': state.batch_stats},
                         images, train=False)
    return task.eval_sums(logits, batch['label'], batch['mask'])

  rep, data = replicated(mesh), data_sharded(mesh)
  return jax.jit(step, in_shardings=(rep, data), out_shardings=rep)
