"""ImageNet-scale input: encoded images decoded per example in grain worker processes.

Training takes the Inception random-resized crop (area 8-100%, aspect 3/4-4/3) to
`data.image_size` and a horizontal flip, drawn from (seed, step, position in the global
batch) alone: a resumed run, any number of worker processes and any number of JAX
processes see the same batches. Evaluation resizes the shorter side to
`data.eval_resize` and center-crops. JPEGs are decoded at reduced size where the crop
allows it (PIL's draft mode: the DCT scales by 1/2, 1/4 or 1/8).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
from absl import flags
import numpy as np
from PIL import Image

AREA = (0.08, 1.0)
ASPECT = (3 / 4, 4 / 3)
_ATTEMPTS = 10
_JPEG_SUFFIXES = ('.jpg', '.jpeg', '.png')
_ENDLESS = 2**62  # Steps of an iterator that runs until it is closed.


def crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
  """(left, top, crop width, crop height): the Inception random-resized crop.

  Up to 10 draws of an area fraction in AREA and a log-uniform aspect in ASPECT;
  if none fits, the largest center crop whose aspect lies in ASPECT.
  """
  for _ in range(_ATTEMPTS):
    area = rng.uniform(*AREA) * width * height
    aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
    crop_w, crop_h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      return (int(rng.integers(0, width - crop_w + 1)),
              int(rng.integers(0, height - crop_h + 1)), crop_w, crop_h)
  crop_w, crop_h = width, height
  if width / height < ASPECT[0]:
    crop_h = round(width / ASPECT[0])
  elif width / height > ASPECT[1]:
    crop_w = round(height * ASPECT[1])
  return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def _crop_resize(data: bytes, name: str, size: int, box_of) -> np.ndarray:
  """Decodes `data` (drafted), resizes the box `box_of(width, height)` to size x size.

  Raises:
    ValueError: naming the image, on whatever Pillow raised for damaged bytes.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      left, top, crop_w, crop_h = box_of(width, height)
      # The smallest DCT scale that leaves the crop at least size x size pixels.
      image.draft('RGB', (math.ceil(width * size / crop_w),
                          math.ceil(height * size / crop_h)))
      sx, sy = image.size[0] / width, image.size[1] / height
      box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
      if image.mode != 'RGB':  # convert() copies even when the mode is already RGB.
        image = image.convert('RGB')
      return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box),
                        np.uint8)
  except Exception as error:  # pylint: disable=broad-except  (damaged input)
    raise ValueError(f'cannot decode image {name}: {type(error).__name__}: {error}') from error


def train_image(data: bytes, name: str, size: int, seed: int, step: int,
                position: int, flip: bool = True) -> np.ndarray:
  """The augmented training image of global-batch `position` at `step`."""
  rng = np.random.default_rng([seed, step, position, 2])
  mirror = flip and rng.random() < 0.5
  image = _crop_resize(data, name, size, lambda w, h: crop_box(rng, w, h))
  return image[:, ::-1] if mirror else image


def eval_image(data: bytes, name: str, size: int, resize: int) -> np.ndarray:
  """Shorter side resized to `resize`, then the center size x size."""

  def center(width: int, height: int) -> tuple[float, float, float, float]:
    side = size * min(width, height) / resize  # The crop in original pixels.
    return (width - side) / 2, (height - side) / 2, side, side

  return _crop_resize(data, name, size, center)


class FolderImages:
  """The images of SPLIT/CLASS/IMAGE in a folder: path and label, read on access."""

  def __init__(self, root: Path, split: str, class_names: Sequence[str]):
    labels = {name: label for label, name in enumerate(class_names)}
    folder = root / split
    self.files = sorted(Path(parent) / name for parent, _, names in os.walk(folder)
                        for name in names if name.lower().endswith(_JPEG_SUFFIXES))
    if not self.files:
      raise ValueError(f'{folder}: no images; expected {folder}/CLASS/IMAGE.jpg')
    unknown = sorted({f.parent.name for f in self.files} - labels.keys())
    if unknown:
      raise ValueError(f'{folder}: class {unknown[0]!r} is not a class of the training split')
    self.labels = np.array([labels[f.parent.name] for f in self.files], np.int32)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> tuple[bytes, int, str]:
    path = self.files[index]
    return path.read_bytes(), int(self.labels[index]), str(path)


class TfdsImages:
  """A tfds data source read with undecoded images: (JPEG bytes, label, name)."""

  def __init__(self, examples: Sequence[Any], description: str):
    self.examples, self.description = examples, description

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index: int) -> tuple[bytes, int, str]:
    example = self.examples[index]
    name = example.get('file_name', b'')
    name = name.decode() if isinstance(name, bytes) else str(name)
    return example['image'], int(example['label']), f'{self.description}[{index}] {name}'


@dataclasses.dataclass(frozen=True)
class EncodedSource:
  """A split of encoded images decoded per access (a `train.data.Source`).

  `get_batch` gives evaluation images; `train_batches` the augmented training stream.
  """

  images: Any  # FolderImages or TfdsImages: (bytes, label, name) by index.
  image_size: int
  eval_resize: int
  workers: int  # grain worker processes; 0 decodes in this process.
  flip: bool = True
  threads: int = 0  # Decoding threads per decoding process; 0: its main thread alone.

  def __len__(self) -> int:
    return len(self.images)

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    records = [self.images[int(i)] for i in indices]
    images = [eval_image(data, name, self.image_size, self.eval_resize)
              for data, _, name in records]
    return np.stack(images), np.array([label for _, label, _ in records], np.int32)

  def subset(self, indices: np.ndarray) -> EncodedSource:
    """The examples at `indices`, in that order."""
    return dataclasses.replace(self, images=_Selected(self.images, np.asarray(indices)))

  def train_batches(self, *, batch_size: int, seed: int, start_step: int,
                    local: slice) -> grain.DatasetIterator:
    """Endless batches (this process's slice `local` of each global batch)."""
    per_step = local.stop - local.start
    example = _TrainExample(self, batch_size, seed, local.start, per_step)
    dataset = grain.MapDataset.range(start_step * per_step, _ENDLESS).map(example)
    return self._iterate(dataset.batch(per_step))

  def in_workers(self, make: Callable[[int], Any], count: int) -> grain.DatasetIterator:
    """make(0), ..., make(count - 1) in order, computed in the workers."""
    return self._iterate(grain.MapDataset.range(count).map(make))

  def _iterate(self, dataset: grain.MapDataset) -> grain.DatasetIterator:
    """Iterates `dataset` in `workers` processes (close() stops them).

    Batched as a MapDataset, each element is a whole batch: grain's workers take
    alternate elements, so they must be batches, not images.
    """
    # grain's default (16 threads per process) makes one worker use every core, so
    # workers would contend rather than add up; one thread makes a worker one core.
    stream = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=self.threads, prefetch_buffer_size=2 * self.threads))
    if self.workers:
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (main.py parses
        flags.FLAGS.mark_as_parsed()  # them; a notebook or a test does not).
      stream = stream.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=2))
    return iter(stream)


@dataclasses.dataclass(frozen=True)
class _Selected:
  """The records of `images` at `indices`."""

  images: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> tuple[bytes, int, str]:
    return self.images[int(self.indices[index])]


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Element k of the stream: position k % per_step of this process's slice at step
  k // per_step (a picklable function for grain's workers)."""

  source: EncodedSource
  batch_size: int
  seed: int
  first: int  # This process's first position in the global batch.
  per_step: int

  def __call__(self, k: int) -> dict[str, Any]:
    from train import data  # pylint: disable=g-import-not-at-top  (data imports us)

    step, offset = divmod(k, self.per_step)
    position = self.first + offset
    index = data.train_batch_indices(len(self.source), self.batch_size, self.seed,
                                     step)[position]
    payload, label, name = self.source.images[int(index)]
    image = train_image(payload, name, self.source.image_size, self.seed, step, position,
                        self.source.flip)
    return {'image': image, 'label': np.int32(label)}
