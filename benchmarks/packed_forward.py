"""Inference latency of the packed CCI forward pass against the dense forward pass.

  python -m benchmarks.packed_forward --model=resnet20

The packed pass gathers each kept weight's input from `(values, indices)`; the dense
pass runs the masked kernels with XLA's convolution. Both are jitted, on the same
random weights (2 of 8 masks), checked equal before timing.
"""

from typing import Any

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import cci
from train import timing
from train import models


def measure(model_name: str, batches: list[int], repeats: int,
            image_size: int = 32) -> list[dict[str, Any]]:
  """Latency entries: dense and packed seconds per batch, ratio packed / dense."""
  model = models.build_model(model_name, 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                         train=False)
  params = variables['params']
  decisions = cci.select_kernels(params, 8, 2)
  grouped = {d.path for d in decisions if d.grouped}
  masked = jax.tree_util.tree_map_with_path(
      lambda kp, w: w * cci.cci_mask(w, 8, 2) if cci.masks.path_of(kp) in grouped else w,
      params)
  packed = {}
  for path in grouped:
    layer = path[:-len('/kernel')]
    kernel = _get(masked, path)
    packed[layer] = cci.pack(kernel, kernel != 0, 8)
  masked_vars = {**variables, 'params': masked}
  dense_fn = jax.jit(lambda x: model.apply(masked_vars, x, train=False))
  packed_fn = jax.jit(lambda x: cci.packed_apply(model, masked_vars, packed, 8, 2, x,
                                                 train=False))
  entries = []
  for batch in batches:
    x = jax.random.normal(jax.random.key(1), (batch, image_size, image_size, 3))
    np.testing.assert_allclose(packed_fn(x), dense_fn(x), rtol=1e-4, atol=1e-4)
    seconds = timing.interleaved({'dense': lambda: dense_fn(x),
                                  'packed': lambda: packed_fn(x)}, repeats)
    entries.append({'name': f'packed_forward/{model_name}/b{batch}',
                    'seconds': seconds['packed'], 'dense_seconds': seconds['dense'],
                    'ratio': seconds['packed'] / seconds['dense'], 'target': None})
  return entries


def _get(tree: Any, path: str) -> Any:
  for key in path.split('/'):
    tree = tree[key]
  return tree


def main(argv):
  del argv
  for e in measure(flags.FLAGS.model, [int(b) for b in flags.FLAGS.batches], flags.FLAGS.repeats):
    print(f'{e["name"]:<32} dense {e["dense_seconds"] * 1e3:8.2f} ms  packed '
          f'{e["seconds"] * 1e3:8.2f} ms  packed/dense x{e["ratio"]:.2f}')


if __name__ == '__main__':
  flags.DEFINE_string('model', 'resnet20', 'Model name.')
  flags.DEFINE_list('batches', ['1', '128'], 'Batch sizes.')
  flags.DEFINE_integer('repeats', 10, 'Timed calls per variant.')
  app.run(main)
