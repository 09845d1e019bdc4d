"""Image classification data: loading (folder, tfds, digits), caching and batching.

Images stay uint8 in 0..255 here; the jitted step normalises them with
`ImageDataset.mean` and `ImageDataset.std`. Segmentation sources (labels are masks)
live in `train.seg_data`; `train_batches` augments their images and masks together.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import os
import queue
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from train import imagenet_data
from train import workdir as workdir_lib

SOURCES = ('folder', 'tfds', 'digits', 'seg_digits', 'seg_folder', 'seg_tfds')

FOLDER_LAYOUT = '[ROOT/]SPLIT/CLASS/IMAGE with IMAGE a .jpg, .jpeg or .png file'
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
_ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz')
_CACHE_VERSION = 1
_CACHE_KEYS = ('train_images', 'train_labels', 'test_images', 'test_labels',
               'class_names', 'mean', 'std')
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_ENV = 'CCI_C2S2_SHARED_DIR'
_SHARED_PREFIX = '../shared/'
_SMALL_TFDS_EXAMPLES = (
  100_000  # tfds splits up to this size and side are held in memory
)
_SMALL_TFDS_SIDE = 64
_RESIZE_RATIO = 1.14  # data.eval_resize=0: the shorter side to 1.14 * image_size
_STATS_SAMPLE = 1000  # examples that estimate mean/std of a source not held in memory
_T = TypeVar('_T')


class Source(Protocol):
  """Random access to a split."""

  def __len__(self) -> int: ...

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B,H,W,C) and int32 labels (B,) for the given indices."""


class ArraySource:
  """A split held in memory as uint8 images (N,H,W,C) and labels (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
      raise ValueError(
        f'ArraySource needs uint8 (N,H,W,C) images and N labels, got '
        f'{images.dtype} {images.shape} and {np.shape(labels)}'
      )
    self.images = images
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.images)

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels at `indices`."""
    return self.images[indices], self.labels[indices]


class Subset:
  """The examples of another source at `indices` (e.g. a held-out part of a split)."""

  def __init__(self, source: Source, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.source.get_batch(self.indices[np.asarray(indices)])

  def __getattr__(self, name: str) -> Any:
    """The source's joint augmentation (`augment_pair`), if it has one."""
    if name != 'augment_pair':
      raise AttributeError(name)
    return getattr(self.source, name)


HELD_OUT_SEED = 7919  # Fixed, so every run with the same data.held_out agrees.


def split_off(source: Source, count: int) -> tuple[Source, Source]:
  """(rest, held_out): `count` examples drawn by a fixed seed, and the others; sorted.

  Parts of an encoded source stay encoded sources (decoded and augmented in workers).
  """
  if not 0 < count < len(source):
    raise ValueError(f'data.held_out={count}: cannot hold out {count} of the '
                     f'{len(source)} training examples')
  permutation = np.random.default_rng(HELD_OUT_SEED).permutation(len(source))
  part = source.subset if isinstance(source, imagenet_data.EncodedSource) else (
      functools.partial(Subset, source))
  return part(np.sort(permutation[count:])), part(np.sort(permutation[:count]))


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Train and test splits, class names and per-channel pixel mean/std (0..255 units)."""

  train: Source
  test: Source
  class_names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  held_out: Source | None = None  # Training images no run trains on (data.held_out).
  # Segmentation (labels are (H,W) masks): the mask value that no loss or metric counts.
  ignore_label: int | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C), read from the first training example."""
    return self.train.get_batch(np.zeros(1, np.int64))[0].shape[1:]


def load_dataset(data_config: ml_collections.ConfigDict) -> ImageDataset:
  """Loads the train and test splits that the `data` config section names."""
  from train import seg_data  # pylint: disable=g-import-not-at-top  (imports this module)

  loaders = {'folder': _load_folder, 'tfds': _load_tfds, 'digits': _load_digits,
             **seg_data.LOADERS}
  if data_config.source not in loaders:
    raise ValueError(
      f'data.source={data_config.source!r} is not one of {sorted(loaders)}'
    )
  if data_config.image_size <= 0:
    raise ValueError(f'data.image_size must be positive, got {data_config.image_size}')
  dataset = loaders[data_config.source](data_config)
  if data_config.held_out:
    rest, held_out = split_off(dataset.train, data_config.held_out)
    dataset = dataclasses.replace(dataset, train=rest, held_out=held_out)
  return dataset


def _with_stats(
  train: Source, test: Source, class_names: Sequence[str]
) -> ImageDataset:
  """An ImageDataset whose mean/std are computed from `train`."""
  return ImageDataset(train, test, tuple(class_names), *_channel_stats(train))


def _channel_stats(source: Source) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of all pixels of an ArraySource, else of a sample."""
  n = len(source)
  if isinstance(source, ArraySource):
    indices = np.arange(n)
  else:
    indices = np.linspace(0, n - 1, min(n, _STATS_SAMPLE)).astype(np.int64)
  total, total_sq, count = 0.0, 0.0, 0
  for chunk in np.array_split(indices, max(1, len(indices) // 1024)):
    pixels = source.get_batch(chunk)[0].astype(np.float64)
    pixels = pixels.reshape(-1, pixels.shape[-1])
    total, total_sq = total + pixels.sum(0), total_sq + (pixels**2).sum(0)
    count += len(pixels)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
  return mean.astype(np.float32), std.astype(np.float32)


def _to_rgb(array: np.ndarray) -> Image.Image:
  """A PIL RGB image from a uint8 (H,W), (H,W,1) or (H,W,3) array."""
  return Image.fromarray(
    array.squeeze(-1) if array.shape[-1:] == (1,) else array
  ).convert('RGB')


def _resize(image: Image.Image, size: int) -> np.ndarray:
  """The image as a uint8 array, bilinearly resized to size x size if it is not."""
  if image.size != (size, size):
    image = image.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def _decode_image(data: bytes, name: str, image_size: int) -> np.ndarray:
  """Decodes JPEG/PNG bytes to uint8 RGB (image_size, image_size, 3).

  Raises:
    ValueError: naming the image, whatever Pillow raised on damaged bytes (OSError,
      SyntaxError, DecompressionBombError, ...).
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      rgb = image.convert('RGB')
  except Exception as error:  # pylint: disable=broad-except  (damaged input)
    raise ValueError(
      f'cannot decode image {name}: {type(error).__name__}: {error}'
    ) from error
  return _resize(rgb, image_size)


def shared_dir() -> Path:
  """The workplace's shared folder: `$CCI_C2S2_SHARED_DIR`, else `shared/` beside the
  project's root folder (where `../shared/...` paths in configs point)."""
  return Path(os.environ.get(SHARED_DIR_ENV) or PROJECT_ROOT.parent / 'shared')


def resolve_path(path: str) -> Path:
  """A `data.path` as a file: `~` expanded; a path starting `../shared/` lies in
  `shared_dir()`; another relative path is taken from the working directory if it
  exists there, else from the project's root folder."""
  if path.startswith(_SHARED_PREFIX):
    return (shared_dir() / path[len(_SHARED_PREFIX):]).absolute()
  candidate = Path(path).expanduser()
  if candidate.is_absolute() or candidate.exists():
    return candidate.absolute()
  return PROJECT_ROOT / candidate


def _load_folder(cfg: ml_collections.ConfigDict) -> ImageDataset:
  """An image folder or tar archive, decoded once and then read from an .npz cache
  (with data.per_example, a folder's JPEGs decoded per use instead)."""
  if not cfg.path:
    raise ValueError("data.path must be set when data.source='folder'")
  path = resolve_path(cfg.path)
  if not path.exists():
    raise FileNotFoundError(
      f'data.path={cfg.path!r}: no such file or directory ({path})'
    )
  if not path.is_dir() and not path.name.endswith(_ARCHIVE_SUFFIXES):
    raise ValueError(
      f'data.path={cfg.path!r} is neither a directory nor a '
      f'{"/".join(_ARCHIVE_SUFFIXES)} archive'
    )
  splits = (cfg.train_split, cfg.test_split)
  if cfg.per_example:
    return _encoded_folder(cfg, path)
  key = _folder_key(path, splits, cfg.image_size)
  cache_file = _cache_dir(cfg.cache_dir) / f'{path.name}-{key}.npz'
  arrays = _read_cache(cache_file)
  if arrays is None:
    arrays = _decode_folder(path, splits, cfg.image_size)
    train = ArraySource(arrays['train_images'], arrays['train_labels'])
    arrays['mean'], arrays['std'] = _channel_stats(train)
    _save_npz_atomic(cache_file, arrays)
  return ImageDataset(
    ArraySource(arrays['train_images'], arrays['train_labels']),
    ArraySource(arrays['test_images'], arrays['test_labels']),
    tuple(str(name) for name in arrays['class_names']),
    arrays['mean'],
    arrays['std'],
  )


def _encoded(cfg: ml_collections.ConfigDict, images: Any) -> imagenet_data.EncodedSource:
  """Per-example decoding of `images` with the `data` section's sizes and workers."""
  return imagenet_data.EncodedSource(
      images, cfg.image_size, cfg.eval_resize or round(_RESIZE_RATIO * cfg.image_size),
      cfg.workers, cfg.flip, cfg.get('worker_threads', 0))


def _encoded_folder(cfg: ml_collections.ConfigDict, path: Path) -> ImageDataset:
  """A folder of SPLIT/CLASS/IMAGE files of any size (ImageNet's train/val layout)."""
  if not path.is_dir():
    raise ValueError(f'data.path={cfg.path!r}: data.per_example needs a directory '
                     f'(extract the archive), got {path}')
  train_dir = path / cfg.train_split
  class_names = sorted(d.name for d in train_dir.iterdir() if d.is_dir()) if (
      train_dir.is_dir()) else []
  if not class_names:
    raise ValueError(f'{train_dir} (data.train_split) has no class folders; expected '
                     f'{FOLDER_LAYOUT}')
  train, test = (_encoded(cfg, imagenet_data.FolderImages(path, split, class_names))
                 for split in (cfg.train_split, cfg.test_split))
  return _with_stats(train, test, class_names)


def _read_cache(cache_file: Path) -> dict[str, np.ndarray] | None:
  """The arrays of a cache file; None if it is absent or unreadable (then rebuilt)."""
  if not cache_file.exists():
    return None
  try:
    with np.load(cache_file, allow_pickle=False) as cached:
      return {name: cached[name] for name in _CACHE_KEYS}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
    logging.warning('Decoding the data again: cache %s is unreadable (%s).',
                    cache_file, error)
    return None


def _cache_dir(configured: str) -> Path:
  """data.cache_dir, else $CCI_C2S2_CACHE, else ~/.cache/cci_c2s2."""
  default = os.environ.get('CCI_C2S2_CACHE') or '~/.cache/cci_c2s2'
  return Path(configured or default).expanduser()


def _folder_key(path: Path, splits: tuple[str, str], image_size: int) -> str:
  """Cache key from the path, its files' sizes and mtimes, the splits and image_size."""
  files = _walk_images(path) if path.is_dir() else [path]
  stats = [
    (f.relative_to(path.parent).as_posix(), (st := f.stat()).st_size, st.st_mtime_ns)
    for f in files
  ]
  payload = json.dumps([_CACHE_VERSION, str(path), stats, splits, image_size])
  return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes an .npz via a temporary file and os.replace, so it is whole or absent."""
  path.parent.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_atomically(str(path), lambda f: np.savez(f, **arrays), 'wb')


def _walk_images(root: Path) -> list[Path]:
  """Sorted image files under a directory (symlinked directories are not followed)."""
  return sorted(
    Path(parent) / name
    for parent, _, names in os.walk(root)
    for name in names
    if name.lower().endswith(_IMAGE_SUFFIXES)
  )


class RefusedMember(ValueError):
  """An archive member that could write or read outside the archive (never read)."""


def _archive_images(archive: Path) -> Iterator[tuple[str, bytes]]:
  """(member path, bytes) of each image member, streamed without extracting to disk.

  Raises:
    RefusedMember: a member with an absolute path, a '..' component, or a link.
    ValueError: the archive is truncated or corrupt (tarfile and the decompressors
      raise many types on damaged input; all are reported as this, naming the file).
  """
  try:
    with tarfile.open(archive, 'r|*') as tar:
      for member in tar:
        if member.name.startswith('/') or '..' in member.name.split('/'):
          raise RefusedMember(
            f'archive {archive}: member {member.name!r} has an absolute path '
            "or a '..' component; refusing it"
          )
        if member.issym() or member.islnk():
          raise RefusedMember(
            f'archive {archive}: member {member.name!r} is a link; refusing it'
          )
        if member.isfile() and member.name.lower().endswith(_IMAGE_SUFFIXES):
          yield member.name, tar.extractfile(member).read()
  except RefusedMember:
    raise
  except Exception as error:  # pylint: disable=broad-except  (damaged input)
    raise ValueError(f'archive {archive} is truncated or corrupt: {error}') from error


def _decode_members(
  path: Path, splits: tuple[str, str], image_size: int
) -> list[tuple[str, str, str, np.ndarray]]:
  """(name, split, class, image) of each image of `splits` in a folder or archive."""
  if path.is_dir():
    members = (
      (f.relative_to(path).as_posix(), f.read_bytes()) for f in _walk_images(path)
    )
  else:
    members = _archive_images(path)
  found = []
  first: tuple[int, str] | None = None  # depth and name of the first image
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for name, data in members:
      parts = [part for part in name.split('/') if part not in ('', '.')]
      first = first or (len(parts), name)
      if len(parts) != first[0]:
        raise ValueError(
          f'{path}: image {name!r} is not at the depth of {first[1]!r}; '
          f'expected every image at {FOLDER_LAYOUT}'
        )
      if len(parts) < 3:
        raise ValueError(f'{path}: image {name!r} is not at {FOLDER_LAYOUT}')
      if parts[-3] in splits:
        image = pool.submit(_decode_image, data, f'{name!r} in {path}', image_size)
        found.append((name, parts[-3], parts[-2], image))
    return [(name, split, cls, image.result()) for name, split, cls, image in found]


def _decode_folder(
  path: Path, splits: tuple[str, str], image_size: int
) -> dict[str, np.ndarray]:
  """Class names, images and labels of both splits; examples are sorted by path."""
  found = sorted(_decode_members(path, splits, image_size), key=lambda item: item[0])
  class_names = sorted({cls for _, split, cls, _ in found if split == splits[0]})
  labels = {cls: label for label, cls in enumerate(class_names)}
  arrays = {'class_names': np.array(class_names, dtype=str)}
  for key, split in zip(('train', 'test'), splits):
    examples = [(cls, image) for _, s, cls, image in found if s == split]
    if not examples:
      raise ValueError(
        f'{path}: split {split!r} (data.{key}_split) has no images; '
        f'expected {FOLDER_LAYOUT}'
      )
    unknown = sorted({cls for cls, _ in examples} - labels.keys())
    if unknown:
      raise ValueError(
        f'{path}: class {unknown[0]!r} of split {split!r} is missing from '
        f'the training split {splits[0]!r}'
      )
    arrays[f'{key}_images'] = np.stack([image for _, image in examples])
    arrays[f'{key}_labels'] = np.array([labels[cls] for cls, _ in examples], np.int32)
  return arrays


def _load_tfds(cfg: ml_collections.ConfigDict) -> ImageDataset:
  """A prepared tfds dataset: small ones decoded into memory, large ones per example."""
  if not cfg.name:
    raise ValueError("data.name must be set when data.source='tfds'")
  train, test = (open_tfds(cfg, split) for split in (cfg.train_split, cfg.test_split))
  features = train.dataset_info.features
  height, width = features['image'].shape[:2]
  small = height and width and max(height, width) <= _SMALL_TFDS_SIDE
  if small and len(train) <= _SMALL_TFDS_EXAMPLES:
    sources = [_tfds_arrays(split, cfg.image_size) for split in (train, test)]
  else:
    sources = [_encoded(cfg, imagenet_data.TfdsImages(
        open_tfds(cfg, split, decode_images=False), f'{cfg.name} {split}'))
               for split in (cfg.train_split, cfg.test_split)]
  return _with_stats(*sources, features['label'].names)


def open_tfds(
  cfg: ml_collections.ConfigDict, split: str, decode_images: bool = True
) -> Sequence[Mapping[str, Any]]:
  """tfds.data_source of one split (images as JPEG bytes unless `decode_images`); with
  data.manual_dir set, prepares from it first."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)

  prepare = None
  if cfg.manual_dir:
    prepare = {
      'download_config': tfds.download.DownloadConfig(manual_dir=cfg.manual_dir)
    }
  decoders = None if decode_images else {'image': tfds.decode.SkipDecoding()}
  try:
    return tfds.data_source(
      cfg.name,
      split=split,
      data_dir=cfg.data_dir or None,
      download=bool(cfg.manual_dir),
      download_and_prepare_kwargs=prepare,
      decoders=decoders,
    )
  except tfds.core.DatasetNotFoundError as error:
    raise ValueError(f'data.name={cfg.name!r} is not a tfds dataset') from error
  except (AssertionError, ImportError, OSError, RuntimeError, KeyError) as error:
    # The message quotes tfds's error; its traceback would only bury the message.
    raise FileNotFoundError(_not_prepared(cfg, split, error)) from None


def _not_prepared(cfg: ml_collections.ConfigDict, split: str, error: Exception) -> str:
  """What is missing, where tfds looked, and the commands that prepare it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)

  try:
    looked = tfds.builder(cfg.name, data_dir=cfg.data_dir or None).data_dir
  except Exception:  # pylint: disable=broad-except  (only informs the message)
    looked = os.path.join(cfg.data_dir or tfds.core.constants.DATA_DIR, cfg.name)
  data_dir = f' --data_dir={cfg.data_dir}' if cfg.data_dir else ''
  manual = cfg.manual_dir or '/path/to/archives'
  return (
    f'tfds dataset data.name={cfg.name!r} (split {split!r}) is not prepared in '
    f'array_record format: tfds looked in {looked} '
    f'(data.data_dir={cfg.data_dir or "(tfds default)"!s}, '
    f'data.manual_dir={cfg.manual_dir or "(unset)"!s}); tfds said: '
    f'{type(error).__name__}: {error}. Prepare it once with `pip install tensorflow-cpu` '
    f'and `tfds build {cfg.name} --file_format=array_record{data_dir} '
    f'--manual_dir={manual}` (imagenet2012: ILSVRC2012_img_train.tar and '
    'ILSVRC2012_img_val.tar in the manual dir; other datasets download), or train '
    'from a JPEG tree with --config.data.source=folder --config.data.path=DIR '
    '--config.data.per_example=True (DIR/train/CLASS/*.JPEG, DIR/validation/CLASS/*.JPEG).'
  )


def _tfds_arrays(examples: Sequence[Mapping[str, Any]], image_size: int) -> ArraySource:
  """Decodes a whole (small) tfds split into memory."""
  examples = [examples[i] for i in range(len(examples))]
  images = np.stack([_resize(_to_rgb(ex['image']), image_size) for ex in examples])
  return ArraySource(images, np.array([ex['label'] for ex in examples], np.int32))


def _load_digits(cfg: ml_collections.ConfigDict) -> ImageDataset:
  """scikit-learn's 8x8 digits as upsampled RGB uint8, split 80/20 stratified."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
  images = np.stack([_resize(_to_rgb(image), cfg.image_size) for image in pixels])
  labels = digits.target.astype(np.int32)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
    images, labels, test_size=0.2, random_state=0, stratify=labels
  )
  return _with_stats(
    ArraySource(train_x, train_y),
    ArraySource(test_x, test_y),
    [str(digit) for digit in range(10)],
  )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped)."""
  if batch_size <= 0 or num_examples < batch_size:
    raise ValueError(
      f'batch_size={batch_size} must be positive and at most the number of '
      f'examples ({num_examples})'
    )
  return num_examples // batch_size


@functools.lru_cache(maxsize=2)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
  permutation.setflags(write=False)
  return permutation


def train_batch_indices(
  num_examples: int, batch_size: int, seed: int, step: int
) -> np.ndarray:
  """Example indices of the global training batch at `step`."""
  epoch, i = divmod(step, steps_per_epoch(num_examples, batch_size))
  return _epoch_permutation(num_examples, seed, epoch)[
    i * batch_size : (i + 1) * batch_size
  ]


def augmentation(
  seed: int, step: int, batch_size: int, crop_padding: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Crop offsets (B, 2) in [0, 2 * crop_padding] and flip bits (B,) of a global batch."""
  rng = np.random.default_rng([seed, step, 1])
  offsets = np.zeros((batch_size, 2), np.int64)
  if crop_padding:
    offsets = rng.integers(0, 2 * crop_padding + 1, (batch_size, 2))
  flips = rng.random(batch_size) < 0.5 if flip else np.zeros(batch_size, bool)
  return offsets, flips


def augment(
  images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, crop_padding: int
) -> np.ndarray:
  """Zero-pads by crop_padding, crops H x W at `offsets`, mirrors where `flips`."""
  if crop_padding:
    n, height, width, _ = images.shape
    p = crop_padding
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    rows = offsets[:, 0, None] + np.arange(height)
    cols = offsets[:, 1, None] + np.arange(width)
    images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


def eval_batch_indices(
  num_examples: int, batch_size: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:
  """Indices of eval batch `batch`, padded by repeating the last example, and its mask."""
  positions = np.arange(batch * batch_size, (batch + 1) * batch_size)
  return np.minimum(positions, num_examples - 1), (positions < num_examples).astype(
    np.float32
  )


def _process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  """This process's contiguous part of a global batch."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
      f'batch_size={batch_size} is not a positive multiple of '
      f'process_count={process_count}'
    )
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def train_batches(
  source: Source,
  *,
  batch_size: int,
  seed: int,
  start_step: int,
  crop_padding: int,
  flip: bool,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless augmented training batches from global step `start_step`, prefetched.

  batch_size is global and each process gets its slice. A step's batch depends only on
  (seed, step), so resuming at start_step=k reproduces an uninterrupted run. A source
  with `augment_pair` (segmentation) is augmented by it, labels (masks) with the images;
  crop_padding does not apply to it.
  """
  local = _process_slice(batch_size, process_index, process_count)
  joint = getattr(source, 'augment_pair', None)
  steps_per_epoch(len(source), batch_size)
  if isinstance(source, imagenet_data.EncodedSource):  # Inception crop, in workers.
    return source.train_batches(batch_size=batch_size, seed=seed,
                                start_step=start_step, local=local)

  def batches() -> Iterator[dict[str, np.ndarray]]:
    for step in itertools.count(start_step):
      indices = train_batch_indices(len(source), batch_size, seed, step)[local]
      offsets, flips = augmentation(seed, step, batch_size, crop_padding, flip)
      images, labels = source.get_batch(indices)
      if joint:
        seeds = np.random.default_rng([seed, step, 2]).integers(2**31, size=batch_size)
        images, labels = joint(images, labels, seeds[local], flip)
      else:
        images = augment(images, offsets[local], flips[local], crop_padding)
      yield {'image': images, 'label': np.asarray(labels, np.int32)}

  return _prefetch(batches())


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
  """This process's part of eval batch `batch` (picklable: worker processes call it)."""

  source: Source
  batch_size: int
  local: slice

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    indices, mask = eval_batch_indices(len(self.source), self.batch_size, batch)
    images, labels = self.source.get_batch(indices[self.local])
    return {
      'image': images,
      'label': np.asarray(labels, np.int32),
      'mask': mask[self.local],
    }


def eval_batches(
  source: Source, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """The whole split once, in order; 'mask' is 1 for examples, 0 for last-batch padding."""
  local = _process_slice(batch_size, process_index, process_count)
  if not len(source):
    raise ValueError('eval_batches needs a non-empty split')
  make, count = _EvalBatch(source, batch_size, local), -(-len(source) // batch_size)
  if isinstance(source, imagenet_data.EncodedSource):  # Decoded in its workers.
    return source.in_workers(make, count)
  return _prefetch(map(make, range(count)))


def _prefetch(items: Iterator[_T], size: int = 2) -> Iterator[_T]:
  """Runs `items` in a daemon thread that keeps `size` ready; it stops when closed."""
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  end = object()

  def put(item: object) -> bool:
    while not stop.is_set():
      with contextlib.suppress(queue.Full):
        ready.put(item, timeout=0.05)
        return True
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put(item):
          return
    except Exception as error:  # pylint: disable=broad-except  (raised in the consumer)
      put(error)
      return
    put(end)

  def consume() -> Iterator[_T]:
    threading.Thread(target=produce, name='data-prefetch', daemon=True).start()
    try:
      while (item := ready.get()) is not end:
        if isinstance(item, Exception):
          raise item
        yield item
    finally:
      stop.set()

  return consume()
