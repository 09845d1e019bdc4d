"""Our dense training step against the same step written as the flax examples write it.

  python -m benchmarks --only=flax_reference

The reference follows flax's examples/imagenet/train.py (single device: `jax.jit`
where the example uses `pmap`): a `flax.training.train_state.TrainState` carrying
`batch_stats`, a train step with `jax.value_and_grad` over the loss with the L2
weight penalty, batch statistics mutable, `optax.sgd` with Nesterov momentum on a
warm-up + cosine schedule, `state.apply_gradients`. It uses nothing of this project
but the model, and standardises the same uint8 batch inside the step as ours does.
Ours is train/steps.py's step with the dense method; ratio ours / reference.
"""

import functools
from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from train import timing

TARGET = 1.05
FULL = ('resnet20', 64, 10)  # model, batch, repeats
SMOKE = ('resnet8', 8, 2)
NUM_CLASSES = 10


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_learning_rate_fn(base_learning_rate: float, warmup_steps: int,
                            total_steps: int) -> optax.Schedule:
  warmup_fn = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  cosine_fn = optax.cosine_decay_schedule(base_learning_rate, total_steps - warmup_steps)
  return optax.join_schedules([warmup_fn, cosine_fn], [warmup_steps])


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  one_hot = jax.nn.one_hot(labels, num_classes=NUM_CLASSES)
  return jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=one_hot))


def compute_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  return {'loss': cross_entropy_loss(logits, labels),
          'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}


def train_step(state: TrainState, batch: dict[str, jax.Array],
               learning_rate_fn: optax.Schedule) -> tuple[TrainState, dict[str, Any]]:
  """Perform a single training step (the example's, without pmean)."""
  images = (batch['image'].astype(jnp.float32) - common.MEAN) / common.STD

  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'])
    loss = cross_entropy_loss(logits, batch['label'])
    weight_penalty_params = jax.tree_util.tree_leaves(params)
    weight_decay = 0.0001
    weight_l2 = sum(jnp.sum(x**2) for x in weight_penalty_params if x.ndim > 1)
    weight_penalty = weight_decay * 0.5 * weight_l2
    return loss + weight_penalty, (new_model_state, logits)

  lr = learning_rate_fn(state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  aux, grads = grad_fn(state.params)
  new_model_state, logits = aux[1]
  metrics = compute_metrics(logits, batch['label'])
  metrics['learning_rate'] = lr
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=new_model_state['batch_stats'])
  return new_state, metrics


def reference_step(model_name: str, batch_size: int) -> Callable[[], jax.Array]:
  """The reference step on the same model, initial variables and batch as ours (the
  batch as a plain single-device array: the example knows no mesh)."""
  b = common.bench(model_name, batch_size)
  learning_rate_fn = create_learning_rate_fn(0.1, 100, common.TOTAL_STEPS)
  variables = common.fresh(b.variables)
  state = TrainState.create(
      apply_fn=b.model.apply, params=variables['params'],
      tx=optax.sgd(learning_rate=learning_rate_fn, momentum=0.9, nesterov=True),
      batch_stats=variables['batch_stats'])
  step = jax.jit(functools.partial(train_step, learning_rate_fn=learning_rate_fn))
  batch = {k: jax.device_put(np.asarray(v)) for k, v in b.batch.items()}  # One device.
  return common.runner(step, state, batch)


def measure(smoke: bool) -> list[common.Entry]:
  """One entry: our step's seconds, ratio to the reference's."""
  model_name, batch_size, repeats = SMOKE if smoke else FULL
  seconds = timing.interleaved({'reference': reference_step(model_name, batch_size),
                                'ours': common.train_step(model_name, batch_size)},
                               repeats)
  return [common.entry(f'flax_reference/{model_name}/b{batch_size}', seconds['ours'],
                       'flax imagenet example step', seconds['reference'], TARGET)]
