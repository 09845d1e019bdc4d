"""Semantic segmentation data: composed digits (embedded), image + mask folders, tfds.

A segmentation split is a `SegmentationSource`: `get_batch` returns uint8 images
(B,H,W,3) and int32 masks (B,H,W), each example padded to the split's canvas (image
with 0, mask with the ignore label), so evaluation sees every pixel at full resolution
and the padding counts nowhere. `train.data.train_batches` hands a segmentation
split's batches to `augment_pair`: a random scale-crop of `data.image_size` pixels and
a horizontal flip applied to image and mask together (the mask resampled by nearest
neighbour, outside pixels ignored). Masks hold class indices `0..num_classes-1` or the
ignore label; anything else, or a mask whose size differs from its image's, is an error
naming the example.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from train import data

FOLDER_LAYOUT = ('ROOT/classes.txt (one class name per line), ROOT/SPLIT/images/NAME.'
                 '{jpg,jpeg,png} and ROOT/SPLIT/masks/NAME.png (class index per pixel)')
CANVAS_MULTIPLE = 16  # Canvas sides are rounded up to this (the models' strides).
DIGIT_CLASSES = ('background', *(str(d) for d in range(10)))
_INK = 96  # A digit pixel brighter than this (0..255) is labelled with its digit.
_PLACEMENT_TRIES = 10

Fetch = Callable[[int], tuple[np.ndarray, np.ndarray, str]]  # image, mask, name


def check_mask(image: np.ndarray, mask: np.ndarray, name: str, num_classes: int,
               ignore_label: int) -> None:
  """Raises ValueError naming `name` if the mask does not fit its image or the classes."""
  if mask.ndim != 2 or mask.shape != image.shape[:2]:
    raise ValueError(f'segmentation example {name}: mask of shape {mask.shape} for an '
                     f'image of {image.shape[0]}x{image.shape[1]} pixels (a mask needs '
                     'one class index per image pixel)')
  bad = (mask < 0) | ((mask >= num_classes) & (mask != ignore_label))
  if bad.any():
    values = sorted(set(np.unique(mask[bad]).tolist()))[:5]
    raise ValueError(f'segmentation example {name}: mask values {values} are outside '
                     f'the {num_classes} classes 0..{num_classes - 1} and not the ignore '
                     f'label {ignore_label} (data.ignore_label)')


class SegmentationSource:
  """Random access to a segmentation split; see the module docstring.

  Args:
    fetch: example index -> (uint8 image (H,W,3), integer mask (H,W), name).
    size: number of examples.
    canvas: (height, width) every example is padded to (at least its size).
    num_classes: classes of the masks.
    ignore_label: the mask value no loss or metric counts.
    crop: side of the square training crops (`augment_pair`).
    scale_range: (low, high) of the random scale of training crops.
  """

  def __init__(self, fetch: Fetch, size: int, canvas: tuple[int, int], num_classes: int,
               ignore_label: int, crop: int, scale_range: Sequence[float]):
    low, high = scale_range
    if not 0 < low <= high:
      raise ValueError(f'data.scale_range={tuple(scale_range)} needs 0 < low <= high')
    if ignore_label < num_classes:
      raise ValueError(f'data.ignore_label={ignore_label} must be >= 0 and not one of '
                       f'the {num_classes} classes')
    self._fetch, self._size, self.canvas = fetch, size, tuple(canvas)
    self.num_classes, self.ignore_label = num_classes, ignore_label
    self.crop, self.scale_range = crop, (float(low), float(high))

  def __len__(self) -> int:
    return self._size

  def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask of one example, checked, at their own size."""
    image, mask, name = self._fetch(int(index))
    check_mask(image, mask, name, self.num_classes, self.ignore_label)
    if mask.shape[0] > self.canvas[0] or mask.shape[1] > self.canvas[1]:
      raise ValueError(f'segmentation example {name}: {mask.shape[0]}x{mask.shape[1]} '
                       f'pixels, larger than the canvas {self.canvas}')
    return image, mask.astype(np.int32)

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (B,H,W,3) and masks (B,H,W) padded to the canvas."""
    height, width = self.canvas
    images = np.zeros((len(indices), height, width, 3), np.uint8)
    masks = np.full((len(indices), height, width), self.ignore_label, np.int32)
    for i, index in enumerate(indices):
      image, mask = self.example(index)
      images[i, :image.shape[0], :image.shape[1]] = image
      masks[i, :mask.shape[0], :mask.shape[1]] = mask
    return images, masks

  def augment_pair(self, images: np.ndarray, masks: np.ndarray, seeds: np.ndarray,
                   flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random scale-crops (crop x crop) and flips, the same for image and mask.

    Each example's crop covers `crop / scale` canvas pixels (scale drawn from
    `scale_range`) at a random place, resized to `crop`; pixels outside the canvas
    are 0 in the image and ignored in the mask. `seeds` (B,) make it deterministic.
    """
    out_images = np.zeros((len(images), self.crop, self.crop, 3), np.uint8)
    out_masks = np.zeros((len(images), self.crop, self.crop), np.int32)
    for i, (image, mask, seed) in enumerate(zip(images, masks, seeds)):
      rng = np.random.default_rng(int(seed))
      window = max(1, round(self.crop / rng.uniform(*self.scale_range)))
      top, left = (rng.integers(min(0, side - window), max(0, side - window) + 1)
                   for side in mask.shape)
      image = _window(image, top, left, window, 0)
      mask = _window(mask, top, left, window, self.ignore_label)
      if window != self.crop:
        image = np.asarray(Image.fromarray(image).resize(
            (self.crop, self.crop), Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(
            (self.crop, self.crop), Image.Resampling.NEAREST))
      if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
      out_images[i], out_masks[i] = image, mask
    return out_images, out_masks


def _window(array: np.ndarray, top: int, left: int, side: int, fill: int) -> np.ndarray:
  """array[top:top+side, left:left+side], `fill` where it lies outside `array`."""
  out = np.full((side, side, *array.shape[2:]), fill, array.dtype)
  rows = slice(max(top, 0), min(top + side, array.shape[0]))
  cols = slice(max(left, 0), min(left + side, array.shape[1]))
  out[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = array[rows,
                                                                                    cols]
  return out


def _canvas(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """The largest height and width, rounded up to CANVAS_MULTIPLE."""
  return tuple(-(-max(s[i] for s in sizes) // CANVAS_MULTIPLE) * CANVAS_MULTIPLE
               for i in (0, 1))


def _dataset(train: SegmentationSource, test: SegmentationSource,
             class_names: Sequence[str]) -> data.ImageDataset:
  """An ImageDataset of segmentation splits; mean/std from a sample of train pixels."""
  sample = train.get_batch(np.linspace(0, len(train) - 1, min(len(train), 200)).astype(int))
  pixels = sample[0][sample[1] != train.ignore_label].astype(np.float64)
  return data.ImageDataset(train, test, tuple(class_names), pixels.mean(0).astype(np.float32),
                           pixels.std(0).astype(np.float32), ignore_label=train.ignore_label)


def _sources(cfg: ml_collections.ConfigDict, fetches: Sequence[tuple[Fetch, int, tuple]],
             num_classes: int) -> list[SegmentationSource]:
  return [SegmentationSource(fetch, size, canvas, num_classes, cfg.ignore_label,
                             cfg.image_size, cfg.scale_range)
          for fetch, size, canvas in fetches]


# Composed digits -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digit_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """scikit-learn's 8x8 digits (0..255) by split, as `train.data`'s digits source."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      pixels, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
  return {'train': (train_x, train_y), 'test': (test_x, test_y)}


def compose_canvas(seed: int, split: str, index: int, size: int,
                   max_digits: int) -> tuple[np.ndarray, np.ndarray]:
  """Canvas `index` of `split`: 1..max_digits digits of that split at random places,
  sides and colours on a dark noisy background, their boxes apart (a digit that finds
  no free place in `_PLACEMENT_TRIES` draws is left out); mask 0 background, d + 1 on
  the ink of digit d. A function of its arguments only."""
  glyphs, labels = _digit_splits()[split]
  rng = np.random.default_rng([seed, ('train', 'test').index(split), index])
  image = rng.integers(0, 48, (size, size, 3)).astype(np.float32)
  mask = np.zeros((size, size), np.int32)
  taken = np.zeros((size, size), bool)
  for _ in range(rng.integers(1, max_digits + 1)):
    k = rng.integers(len(glyphs))
    side = int(rng.integers(max(4, 3 * size // 8), max(5, 5 * size // 8) + 1))
    for _ in range(_PLACEMENT_TRIES):
      top, left = rng.integers(0, size - side + 1, 2)
      region = (slice(top, top + side), slice(left, left + side))
      if not taken[region].any():
        break
    else:
      continue
    taken[region] = True
    glyph = np.asarray(Image.fromarray(glyphs[k]).resize(
        (side, side), Image.Resampling.BILINEAR), np.float32)
    alpha = (glyph / 255)[..., None]
    image[region] = (1 - alpha) * image[region] + alpha * rng.integers(128, 256, 3)
    mask[region] = np.where(glyph > _INK, labels[k] + 1, 0)
  return np.round(image).astype(np.uint8), mask


def _composed(cfg: ml_collections.ConfigDict, split: str, count: int) -> tuple:
  """(fetch, size, canvas) of `count` composed canvases, generated once in memory."""
  if count < 1:
    raise ValueError(f'data.canvases_{split} must be >= 1, got {count}')
  pairs = [compose_canvas(cfg.canvas_seed, split, i, cfg.image_size, cfg.digits_per_canvas)
           for i in range(count)]
  images = np.stack([p[0] for p in pairs])
  masks = np.stack([p[1] for p in pairs])
  fetch = lambda i: (images[i], masks[i], f'composed digits {split} canvas {i}')
  return fetch, count, (cfg.image_size, cfg.image_size)


def load_composed_digits(cfg: ml_collections.ConfigDict) -> data.ImageDataset:
  """Canvases of scikit-learn digits (data.source='seg_digits'); see `compose_canvas`."""
  if cfg.digits_per_canvas < 1:
    raise ValueError(f'data.digits_per_canvas must be >= 1, got {cfg.digits_per_canvas}')
  splits = [_composed(cfg, 'train', cfg.canvases_train),
            _composed(cfg, 'test', cfg.canvases_test)]
  return _dataset(*_sources(cfg, splits, len(DIGIT_CLASSES)), DIGIT_CLASSES)


# Image + mask folders ----------------------------------------------------------------


def _read(path: Path, mode: str | None) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert(mode) if mode else image)
  except Exception as error:  # pylint: disable=broad-except  (damaged input)
    raise ValueError(f'cannot decode {path}: {type(error).__name__}: {error}') from error


def _folder_split(root: Path, split: str, num_classes: int, ignore_label: int) -> tuple:
  """(fetch, size, canvas) of ROOT/SPLIT, every mask checked against its image."""
  images = sorted(p for p in (root / split / 'images').glob('*')
                  if p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
  if not images:
    raise ValueError(f'{root}: split {split!r} has no images; expected {FOLDER_LAYOUT}')
  pairs, sizes = [], []
  for image in images:
    mask = root / split / 'masks' / f'{image.stem}.png'
    if not mask.exists():
      raise ValueError(f'segmentation example {image}: no mask {mask}; expected '
                       f'{FOLDER_LAYOUT}')
    with Image.open(image) as header:  # Size only; decoded when used.
      width, height = header.size
    check_mask(np.empty((height, width, 3), np.uint8), _read(mask, None), str(mask),
               num_classes, ignore_label)
    pairs.append((image, mask))
    sizes.append((height, width))

  def fetch(i: int) -> tuple[np.ndarray, np.ndarray, str]:
    image, mask = pairs[i]
    return _read(image, 'RGB'), _read(mask, None), str(mask)

  return fetch, len(pairs), _canvas(sizes)


def load_folder(cfg: ml_collections.ConfigDict) -> data.ImageDataset:
  """Image + mask folders (data.source='seg_folder', layout `FOLDER_LAYOUT`)."""
  if not cfg.path:
    raise ValueError("data.path must be set when data.source='seg_folder'")
  root = data.resolve_path(cfg.path)
  names_file = root / 'classes.txt'
  if not names_file.is_file():
    raise FileNotFoundError(f'data.path={cfg.path!r}: no {names_file}; expected '
                            f'{FOLDER_LAYOUT}')
  names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
  splits = [_folder_split(root, split, len(names), cfg.ignore_label)
            for split in (cfg.train_split, cfg.test_split)]
  return _dataset(*_sources(cfg, splits, len(names)), names)


# tfds ------------------------------------------------------------------------------


def load_tfds(cfg: ml_collections.ConfigDict) -> data.ImageDataset:
  """A prepared tfds dataset with masks (data.source='seg_tfds'): `data.image_key` and
  `data.mask_key` name the features, `data.num_classes` the classes; masks are checked
  when read. The canvas is the features' fixed size, else `data.canvas_size`."""
  if cfg.num_classes < 1:
    raise ValueError("data.num_classes must be set when data.source='seg_tfds'")
  opened = [data.open_tfds(cfg, split) for split in (cfg.train_split, cfg.test_split)]
  height, width = opened[0].dataset_info.features[cfg.image_key].shape[:2]
  if not (height and width) and cfg.canvas_size < 1:
    raise ValueError(f'data.name={cfg.name!r} has images of varying size: set '
                     'data.canvas_size to a side that holds the largest')
  canvas = _canvas([(height or cfg.canvas_size, width or cfg.canvas_size)])

  def fetcher(examples, split):
    def fetch(i):
      example = examples[i]
      image = np.asarray(example[cfg.image_key], np.uint8)
      image = np.repeat(image, 3, -1) if image.shape[-1:] == (1,) else image
      mask = np.asarray(example[cfg.mask_key])
      return image, mask.squeeze(-1) if mask.ndim == 3 else mask, f'{cfg.name} {split} {i}'
    return fetch

  splits = [(fetcher(examples, split), len(examples), canvas)
            for examples, split in zip(opened, (cfg.train_split, cfg.test_split))]
  return _dataset(*_sources(cfg, splits, cfg.num_classes),
                  [str(c) for c in range(cfg.num_classes)])


LOADERS = {'seg_digits': load_composed_digits, 'seg_folder': load_folder,
           'seg_tfds': load_tfds}
