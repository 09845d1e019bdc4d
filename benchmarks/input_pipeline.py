"""Input pipeline throughput against what the training step consumes.

  python -m benchmarks --only=input_pipeline

The CIFAR-10 training pipeline of train/data.py (`train_batches`: per-epoch
permutation, pad-4 random crop and flip, prefetch thread) plus the transfer to the
device mesh, as the training loop pulls it, over the shared CIFAR-10 archive when it
is there (configs/resnet20_cpu.py's source; decoded once into the data cache) or else
random uint8 images of the same shape in the same source type. Against the dense
ResNet-20 step at the same batch, interleaved. Ratio: step images/s over pipeline
images/s; the pipeline must be at least 3x faster than the step (target 1/3).
"""

from typing import Any, Callable

import numpy as np

from benchmarks import common
from configs import resnet20_cpu
from train import data, steps, timing

TARGET = 1 / 3
ARCHIVE = data.shared_dir() / 'data' / 'cifar10-jpeg.tar.gz'
# (model, batch, batches pulled per timed call, repeats)
FULL = ('resnet20', 64, 10, 10)
SMOKE = ('resnet8', 8, 2, 2)


def source(smoke: bool) -> tuple[str, data.Source]:
  """('cifar10', the shared training split), else ('synthetic', random images)."""
  if ARCHIVE.exists() and not smoke:
    cfg = resnet20_cpu.get_config().data  # Its path resolves to ARCHIVE: runs' cache.
    return 'cifar10', data.load_dataset(cfg).train
  rng = np.random.default_rng(0)
  count = 256 if smoke else 50_000
  return 'synthetic', data.ArraySource(
      rng.integers(0, 256, (count, 32, 32, 3), np.uint8),
      rng.integers(0, 10, count).astype(np.int32))


def pipeline_fn(train: data.Source, batch_size: int,
                batches: int) -> Callable[[], Any]:
  """Pulls `batches` augmented batches from a fresh iterator, each to the device."""
  config = resnet20_cpu.get_config()
  mesh = steps.make_mesh()
  position = {'step': 0}

  def pull() -> Any:
    iterator = data.train_batches(
        train, batch_size=batch_size, seed=config.seed, start_step=position['step'],
        crop_padding=config.data.crop_padding, flip=config.data.flip)
    for _ in range(batches):
      last = steps.to_global(next(iterator), mesh)
    iterator.close()
    position['step'] += batches
    return last

  return pull


def measure(smoke: bool) -> list[common.Entry]:
  """One entry: seconds per pipeline batch, ratio step images/s / pipeline images/s."""
  model_name, batch_size, batches, repeats = SMOKE if smoke else FULL
  name, train = source(smoke)
  seconds = timing.interleaved(
      {'pipeline': pipeline_fn(train, batch_size, batches),
       'step': common.train_step(model_name, batch_size)}, repeats)
  per_batch = seconds['pipeline'] / batches
  return [common.entry(
      f'input_pipeline/{name}/b{batch_size}', per_batch,
      f'train_step/{model_name}/b{batch_size}/dense', seconds['step'], TARGET,
      pipeline_images_per_s=batch_size / per_batch,
      step_images_per_s=batch_size / seconds['step'])]
