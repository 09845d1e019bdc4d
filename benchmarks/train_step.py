"""Training-step time of dense against CCI (dynamic, and a fixed oneshot mask).

  python -m benchmarks.train_step --model=resnet20 --batch=64

Prints each step time and its ratio to dense, measured interleaved in one run.
"""

from typing import Any

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from train import timing
from configs import base
from train import methods, models, optim, steps
from train.state import TrainState


VARIANTS = {'dense': 'none', 'cci_dynamic': 'dynamic', 'cci_fixed_mask': 'oneshot'}
TARGETS = {'cci_dynamic': 1.10, 'cci_fixed_mask': 1.05}


def step_fns(model_name: str, batch_size: int, image_size: int = 32,
             num_classes: int = 10) -> dict[str, Any]:
  """One jitted train step and its state per variant, on one random batch."""
  model = models.build_model(model_name, num_classes)
  mesh = steps.make_mesh()
  rng = np.random.default_rng(0)
  batch = steps.to_global({
      'image': rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
  variables = model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                         train=False)
  fns = {}
  for name, method_name in VARIANTS.items():
    config = base.get_base_config()
    config.sparsity.method = method_name
    schedule = optim.make_schedule(config.optimizer, 1000, 100)
    method = methods.build(config, optim.make_optimizer(config.optimizer, schedule),
                           variables['params'], total_steps=1000)
    step = steps.make_train_step(model, method, schedule, np.float32(120),
                                 np.float32(60), mesh)
    own = jax.tree.map(jnp.copy, variables)  # The step donates its state.
    holder = {'state': jax.device_put(TrainState.create(own, method.tx),
                                      steps.replicated(mesh))}

    def run(step=step, holder=holder):
      holder['state'], metrics = step(holder['state'], batch)
      return metrics['loss']

    fns[name] = run
  return fns


def measure(model_name: str, batch_size: int, repeats: int) -> list[dict[str, Any]]:
  """Benchmark entries: seconds per step and the ratio to dense."""
  seconds = timing.interleaved(step_fns(model_name, batch_size), repeats)
  return [{'name': f'train_step/{model_name}/b{batch_size}/{name}',
           'seconds': s, 'ratio': s / seconds['dense'], 'target': TARGETS.get(name)}
          for name, s in seconds.items()]


def main(argv):
  del argv
  for entry in measure(flags.FLAGS.model, flags.FLAGS.batch, flags.FLAGS.repeats):
    print(f'{entry["name"]:<45} {entry["seconds"] * 1e3:8.1f} ms  '
          f'x{entry["ratio"]:.3f}  target {entry["target"]}')


if __name__ == '__main__':
  flags.DEFINE_string('model', 'resnet20', 'Model name.')
  flags.DEFINE_integer('batch', 64, 'Global batch size.')
  flags.DEFINE_integer('repeats', 10, 'Timed steps per variant.')
  app.run(main)
