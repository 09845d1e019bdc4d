"""Inference latency of the packed CCI forward pass against the dense forward pass.

  python -m benchmarks --only=packed_forward

The packed pass gathers each kept weight's input from `(values, indices)`; the dense
pass runs the masked kernels with XLA's convolution. Both are jitted, on the same
random weights (2 of 8 masks), checked equal before timing. Reported without a target.
"""

from typing import Any

import jax
import numpy as np

import cci
from benchmarks import common
from train import models, timing

# model, batches, repeats: the packed pass takes ~3 s at batch 128 on 2 cores.
FULL = ('resnet20', (1, 128), 5)
SMOKE = ('resnet8', (2,), 2)


def measure(smoke: bool) -> list[common.Entry]:
  """Packed against dense forward at each batch of the full or smoke sizes."""
  return compare(*(SMOKE if smoke else FULL))


def compare(model_name: str, batches: tuple[int, ...], repeats: int,
            image_size: int = 32) -> list[common.Entry]:
  """Latency entries: dense and packed seconds per batch, ratio packed / dense."""
  model = models.build_model(model_name, 10)
  variables = common.init_variables(model, image_size)
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
    entries.append(common.entry(f'packed_forward/{model_name}/b{batch}',
                                seconds['packed'], f'{model_name} dense (masked)',
                                seconds['dense'], None))
  return entries


def _get(tree: Any, path: str) -> Any:
  for key in path.split('/'):
    tree = tree[key]
  return tree

