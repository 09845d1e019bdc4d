"""CCI mask computation for every grouped kernel against one dense training step.

  python -m benchmarks --only=mask_compute

`cci.compute_masks` (what `cci.sparsify` runs when masks change) over all of
ResNet-50's groupable kernels at 2 of 8, jitted, against the dense step of the same
model (train/steps.py); both interleaved. The mask work does not depend on the image
size or batch while the step does: at the reduced CPU sizes the ratio is a pessimistic
bound for real ImageNet batches.
"""

from typing import Callable

import jax
import jax.numpy as jnp

import cci
from benchmarks import common
from train import timing

TARGET = 0.05
GROUP_SIZE, KEEP = 8, 2
# (model, batch, image size, classes) of the dense step; the same as train_step's.
FULL = ('resnet50', 8, 112, 1000)
SMOKE = ('resnet8', 8, 32, 10)
REPEATS = {False: 5, True: 2}


def mask_fn(model_name: str, batch_size: int, image_size: int,
            num_classes: int) -> tuple[Callable[[], jax.Array], int]:
  """The jitted computation of every grouped kernel's mask, and how many kernels."""
  b = common.bench(model_name, batch_size, image_size, num_classes)
  params = b.variables['params']
  grouped = tuple(d.path for d in cci.select_kernels(params, GROUP_SIZE, KEEP)
                  if d.grouped)
  spec = cci.SparsitySpec(grouped=grouped, method='oneshot', group_size=GROUP_SIZE,
                          keep=KEEP)
  compute = jax.jit(lambda p: cci.compute_masks(p, spec, jnp.zeros((), jnp.int32)))
  return lambda: compute(params), len(grouped)


def measure(smoke: bool) -> list[common.Entry]:
  """One entry: seconds of the masks, ratio to the dense step."""
  model_name, batch_size, image_size, num_classes = SMOKE if smoke else FULL
  masks, kernels = mask_fn(model_name, batch_size, image_size, num_classes)
  seconds = timing.interleaved(
      {'masks': masks,
       'dense': common.train_step(model_name, batch_size, image_size,
                                  num_classes=num_classes)}, REPEATS[smoke])
  step = f'train_step/{model_name}{common.px(image_size)}/b{batch_size}/dense'
  return [common.entry(f'mask_compute/{model_name}/{KEEP}of{GROUP_SIZE}',
                       seconds['masks'], step, seconds['dense'], TARGET,
                       kernels=kernels)]
