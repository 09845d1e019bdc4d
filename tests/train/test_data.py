"""Tests for train/data.py: sources, cache, archive safety and batch streams."""

from __future__ import annotations

import io
import itertools
import re
import tarfile
import threading
import time
from pathlib import Path

import hypothesis
import ml_collections
import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from train import data, imagenet_data

COLOURS = {'cat': (255, 0, 0), 'dog': (0, 255, 0), 'emu': (0, 0, 255)}
CIFAR10 = data.shared_dir() / 'data' / 'cifar10-jpeg.tar.gz'


def _config(**overrides: object) -> ml_collections.ConfigDict:
  config = dict(
    source='folder',
    path='',
    name='',
    data_dir='',
    manual_dir='',
    cache_dir='',
    image_size=8,
    train_split='train',
    test_split='test',
    crop_padding=0,
    flip=False,
    held_out=0,
    per_example=False,
    eval_resize=0,
    workers=0,
  )
  return ml_collections.ConfigDict({**config, **overrides})


def _image_bytes(
  colour: tuple[int, ...] | int, fmt: str = 'PNG', mode: str = 'RGB'
) -> bytes:
  buffer = io.BytesIO()
  Image.new(mode, (8, 8), colour).save(buffer, format=fmt)
  return buffer.getvalue()


def _make_folder(root: Path) -> Path:
  """root/{train,test}/{cat,dog,emu}/{0..3}.{jpg,png} in solid class colours, plus a README."""
  for split, (cls, colour), i in itertools.product(
    ('train', 'test'), COLOURS.items(), range(4)
  ):
    (root / split / cls).mkdir(parents=True, exist_ok=True)
    fmt, suffix = ('PNG', 'png') if i % 2 else ('JPEG', 'jpg')
    (root / split / cls / f'{i}.{suffix}').write_bytes(_image_bytes(colour, fmt))
  (root / 'README.txt').write_text('not an image')
  return root


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
  with tarfile.open(path, 'w:gz') as tar:
    for info, payload in members:
      info.size = len(payload or b'')
      tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
  return path


def _member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
  return tarfile.TarInfo(name), payload


def _valid_members() -> list[tuple[tarfile.TarInfo, bytes]]:
  image = _image_bytes((1, 2, 3))
  return [_member(f'tiny/{split}/cat/0.png', image) for split in ('train', 'test')]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
  return _make_folder(tmp_path / 'tiny')


@pytest.fixture
def archive(tmp_path: Path, folder: Path) -> Path:
  path = tmp_path / 'tiny.tar.gz'
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(folder, arcname='tiny')
  return path


def _load(path: Path, tmp_path: Path, **overrides: object) -> data.ImageDataset:
  config = _config(path=str(path), cache_dir=str(tmp_path / 'cache'), **overrides)
  return data.load_dataset(config)


# ----------------------------------------------------------------------------- folder source


@pytest.mark.parametrize('kind', ['folder', 'archive'])
def test_folder_source_labels_shapes_and_classes(
  kind: str, request, tmp_path: Path
) -> None:
  dataset = _load(request.getfixturevalue(kind), tmp_path)
  assert dataset.class_names == ('cat', 'dog', 'emu')
  assert dataset.num_classes == 3 and dataset.image_shape == (8, 8, 3)
  assert (
    dataset.mean.dtype == dataset.std.dtype == np.float32 and dataset.mean.shape == (3,)
  )
  for split in (dataset.train, dataset.test):
    images, labels = split.get_batch(np.arange(len(split)))
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 3)
    assert labels.dtype == np.int32 and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    colours = np.array([COLOURS[dataset.class_names[label]] for label in labels])
    np.testing.assert_allclose(images.mean(axis=(1, 2)), colours, atol=8)
  np.testing.assert_allclose(dataset.mean, 85, atol=3)


def test_folder_source_resizes_to_image_size(archive: Path, tmp_path: Path) -> None:
  assert _load(archive, tmp_path, image_size=16).image_shape == (16, 16, 3)


@pytest.mark.parametrize(
  'mode, colour', [('L', 77), ('RGBA', (10, 20, 30, 40)), ('P', 5)]
)
def test_decode_converts_to_rgb(mode: str, colour: object) -> None:
  image = data._decode_image(_image_bytes(colour, mode=mode), 'x.png', 8)
  expected = np.asarray(Image.new(mode, (8, 8), colour).convert('RGB'))
  np.testing.assert_array_equal(image, expected)


def test_cache_is_reused_without_decoding(
  archive: Path, tmp_path: Path, monkeypatch
) -> None:
  first = _load(archive, tmp_path)
  assert len(list((tmp_path / 'cache').glob('*.npz'))) == 1
  assert not list((tmp_path / 'cache').glob('*.tmp'))

  def no_decode(*args: object) -> None:
    raise AssertionError('decoded again instead of reading the cache')

  monkeypatch.setattr(data, '_decode_image', no_decode)
  second = _load(archive, tmp_path)
  np.testing.assert_array_equal(first.train.images, second.train.images)
  np.testing.assert_array_equal(first.test.labels, second.test.labels)
  np.testing.assert_array_equal(first.mean, second.mean)
  assert first.class_names == second.class_names


def test_cache_dir_defaults_to_env(archive: Path, tmp_path: Path, monkeypatch) -> None:
  monkeypatch.setenv('CCI_C2S2_CACHE', str(tmp_path / 'env_cache'))
  data.load_dataset(_config(path=str(archive)))
  assert len(list((tmp_path / 'env_cache').glob('*.npz'))) == 1


def test_cache_is_refreshed_when_folder_changes(folder: Path, tmp_path: Path) -> None:
  assert len(_load(folder, tmp_path).train) == 12
  (folder / 'train' / 'cat' / 'new.png').write_bytes(_image_bytes(COLOURS['cat']))
  assert len(_load(folder, tmp_path).train) == 13


def test_example_order_ignores_archive_order(folder: Path, tmp_path: Path) -> None:
  files = sorted(p for p in folder.rglob('*') if p.is_file())
  members = [
    _member(f'tiny/{p.relative_to(folder).as_posix()}', p.read_bytes()) for p in files
  ]
  forward = _load(_write_tar(tmp_path / 'forward.tar.gz', members), tmp_path)
  backward = _load(_write_tar(tmp_path / 'backward.tar.gz', members[::-1]), tmp_path)
  np.testing.assert_array_equal(forward.train.images, backward.train.images)
  np.testing.assert_array_equal(forward.test.labels, backward.test.labels)


@pytest.mark.parametrize(
  'name', ['../evil.png', '/tmp/evil.png', 'tiny/train/../../evil.png']
)
def test_refuses_members_escaping_the_archive(name: str, tmp_path: Path) -> None:
  path = _write_tar(
    tmp_path / 'evil.tar.gz', [*_valid_members(), _member(name, _image_bytes(0))]
  )
  with pytest.raises(
    ValueError, match=f"{re.escape(repr(name))} has an absolute path or a '..'"
  ):
    _load(path, tmp_path)


@pytest.mark.parametrize('link_type', [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_refuses_link_members(link_type: bytes, tmp_path: Path) -> None:
  link = tarfile.TarInfo('tiny/train/cat/link.png')
  link.type, link.linkname = link_type, '/etc/passwd'
  path = _write_tar(tmp_path / 'link.tar.gz', [*_valid_members(), (link, None)])
  with pytest.raises(ValueError, match="'tiny/train/cat/link.png' is a link"):
    _load(path, tmp_path)


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_truncated_or_corrupt_archive(
  damage: str, archive: Path, tmp_path: Path
) -> None:
  payload = archive.read_bytes()
  damaged = tmp_path / 'damaged.tar.gz'
  damaged.write_bytes(
    payload[: len(payload) // 2] if damage == 'truncate' else b'\x01' * 999
  )
  with pytest.raises(
    ValueError, match=f'{re.escape(str(damaged))}.*truncated or corrupt'
  ):
    _load(damaged, tmp_path)


def test_undecodable_image_names_member(tmp_path: Path) -> None:
  bad = _member('tiny/train/cat/bad.jpg', b'not a jpeg at all')
  path = _write_tar(tmp_path / 'bad.tar.gz', [*_valid_members(), bad])
  with pytest.raises(ValueError, match="cannot decode image 'tiny/train/cat/bad.jpg'"):
    _load(path, tmp_path)


def test_missing_path_names_config_key(tmp_path: Path) -> None:
  missing = tmp_path / 'nowhere.tar.gz'
  with pytest.raises(FileNotFoundError, match=f'data.path.*{re.escape(str(missing))}'):
    _load(missing, tmp_path)


def test_images_at_mixed_depths_name_a_member(tmp_path: Path) -> None:
  shallow = _member('train/dog/1.png', _image_bytes(0))
  path = _write_tar(tmp_path / 'mixed.tar.gz', [*_valid_members(), shallow])
  with pytest.raises(ValueError, match="'train/dog/1.png' is not at the depth of"):
    _load(path, tmp_path)


def test_split_without_images_names_split(folder: Path, tmp_path: Path) -> None:
  with pytest.raises(
    ValueError, match=r"'val' \(data.test_split\) has no images.*SPLIT/CLASS"
  ):
    _load(folder, tmp_path, test_split='val')


def test_test_class_missing_from_train(folder: Path, tmp_path: Path) -> None:
  (folder / 'test' / 'yak').mkdir()
  (folder / 'test' / 'yak' / '0.png').write_bytes(_image_bytes(0))
  with pytest.raises(ValueError, match="class 'yak'"):
    _load(folder, tmp_path)


def test_unknown_source_names_config_key() -> None:
  with pytest.raises(ValueError, match='data.source'):
    data.load_dataset(_config(source='csv'))


# ----------------------------------------------------------------------------- digits and tfds


def test_held_out_split_is_fixed_disjoint_and_never_in_train() -> None:
  whole = data.load_dataset(_config(source='digits'))
  first = data.load_dataset(_config(source='digits', held_out=300))
  again = data.load_dataset(_config(source='digits', held_out=300))
  assert (len(first.train), len(first.held_out)) == (1137, 300)
  np.testing.assert_array_equal(first.held_out.indices, again.held_out.indices)
  assert not set(first.held_out.indices) & set(first.train.indices)
  images, labels = first.held_out.get_batch(np.arange(3))
  expected = whole.train.get_batch(first.held_out.indices[:3])
  np.testing.assert_array_equal(images, expected[0])
  np.testing.assert_array_equal(labels, expected[1])
  with pytest.raises(ValueError, match='data.held_out=2000'):
    data.load_dataset(_config(source='digits', held_out=2000))


@pytest.mark.parametrize('image_size', [8, 16])
def test_digits_source(image_size: int) -> None:
  dataset = data.load_dataset(_config(source='digits', image_size=image_size))
  assert (len(dataset.train), len(dataset.test)) == (1437, 360)
  assert dataset.class_names == tuple('0123456789')
  assert dataset.image_shape == (image_size, image_size, 3)
  images, labels = dataset.test.get_batch(np.arange(360))
  assert images.dtype == np.uint8 and images.max() == 255
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  assert np.bincount(labels, minlength=10).min() >= 35  # stratified: ~36 per class


@pytest.mark.parametrize('manual_dir', ['', '/nonexistent/manual'])
def test_tfds_small_dataset_is_held_in_memory(manual_dir: str) -> None:
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6):
    dataset = data.load_dataset(
      _config(source='tfds', name='cifar10', image_size=16, manual_dir=manual_dir)
    )
  assert isinstance(dataset.train, data.ArraySource) and len(dataset.train) == 6
  assert dataset.num_classes == 10 and dataset.image_shape == (16, 16, 3)
  assert dataset.train.labels.dtype == np.int32


class _FakeTfdsSplit(list):
  """Examples of a prepared tfds split, with the `dataset_info` a data source has."""

  dataset_info = None


def _fake_imagenet_split(builder, split, decoders=None, **kwargs):
  """ImageNet-like examples of a few sizes: JPEG bytes when decoding is skipped (as
  `tfds.decode.SkipDecoding` gives them), else arrays. (tfds's own mock encodes its
  random JPEGs with TensorFlow, which this project does not install.)"""
  del kwargs
  rng = np.random.default_rng(len(split))
  examples = _FakeTfdsSplit()
  examples.dataset_info = builder.info
  for i in range(5):
    pixels = rng.integers(0, 256, (30 + 7 * i, 50 - 3 * i, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG')
    image = buffer.getvalue() if decoders else pixels
    examples.append({'image': image, 'label': 100 * i, 'file_name': f'n{i}.JPEG'})
  return examples


def test_tfds_large_dataset_decodes_per_example() -> None:
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(as_data_source_fn=_fake_imagenet_split):
    dataset = data.load_dataset(
      _config(
        source='tfds', name='imagenet2012', image_size=24, test_split='validation'
      )
    )
  assert isinstance(dataset.train, imagenet_data.EncodedSource)
  assert dataset.num_classes == 1000
  images, labels = dataset.test.get_batch(np.array([4, 0, 2]))
  train = next(data.train_batches(dataset.train, batch_size=4, seed=0, start_step=0,
                                  crop_padding=0, flip=True))
  assert images.shape == (3, 24, 24, 3) and images.dtype == np.uint8
  assert labels.tolist() == [400, 0, 200]
  assert train['image'].shape == (4, 24, 24, 3)
  assert train['label'].tolist() == [
      100 * i for i in data.train_batch_indices(5, 4, seed=0, step=0)]


def test_tfds_not_prepared_says_how_to_prepare(tmp_path: Path) -> None:
  pytest.importorskip('tensorflow_datasets')
  config = _config(source='tfds', name='cifar10', data_dir=str(tmp_path))
  with pytest.raises(
    FileNotFoundError,
    match='(?s)data.name.*not prepared.*data.data_dir.*'
    'tensorflow-cpu.*tfds build cifar10',
  ):
    data.load_dataset(config)


def test_imagenet_not_prepared_names_the_keys_where_tfds_looked_and_commands(
    tmp_path: Path) -> None:
  pytest.importorskip('tensorflow_datasets')
  config = _config(source='tfds', name='imagenet2012', data_dir=str(tmp_path),
                   test_split='validation')
  with pytest.raises(FileNotFoundError) as raised:
    data.load_dataset(config)
  message = str(raised.value)
  for part in ("data.name='imagenet2012'", f'tfds looked in {tmp_path}/imagenet2012',
               f'data.data_dir={tmp_path}', 'data.manual_dir=(unset)',
               'tfds build imagenet2012 --file_format=array_record',
               'ILSVRC2012_img_train.tar', 'data.source=folder'):
    assert part in message, part


# ----------------------------------------------------------------------------- batches


def _source(n: int = 10, shape: tuple[int, int, int] = (6, 5, 3)) -> data.ArraySource:
  """Random images whose label is their index."""
  images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
  return data.ArraySource(images, np.arange(n))


def _take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  batches = list(itertools.islice(iterator, count))
  iterator.close()
  return batches


def _train(
  source: data.Source, start_step: int = 0, count: int = 7, **overrides: object
):
  kwargs = dict(batch_size=4, seed=3, crop_padding=2, flip=True) | overrides
  return _take(data.train_batches(source, start_step=start_step, **kwargs), count)


def _assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_are_deterministic_and_resumable() -> None:
  source = _source()
  full = _train(source)
  assert full[0]['image'].shape == (4, 6, 5, 3) and full[0]['image'].dtype == np.uint8
  assert full[0]['label'].dtype == np.int32
  _assert_same(full, _train(source))
  _assert_same(full[4:], _train(source, start_step=4, count=3))
  assert not np.array_equal(
    full[0]['image'], _train(source, seed=4, count=1)[0]['image']
  )


def test_train_batches_without_augmentation_return_source_images() -> None:
  source = _source()
  for batch in _train(source, crop_padding=0, flip=False):
    np.testing.assert_array_equal(batch['image'], source.images[batch['label']])


def test_train_batches_crop_and_flip_match_reference() -> None:
  source, padding = _source(), 2
  for step, batch in enumerate(_train(source, crop_padding=padding)):
    offsets, flips = data.augmentation(3, step, 4, padding, True)
    for image, label, (dy, dx), flipped in zip(
      batch['image'], batch['label'], offsets, flips
    ):
      padded = np.pad(
        source.images[label], ((padding, padding), (padding, padding), (0, 0))
      )
      expected = padded[dy : dy + 6, dx : dx + 5]
      np.testing.assert_array_equal(image, expected[:, ::-1] if flipped else expected)


def test_process_slices_concatenate_to_the_global_batch() -> None:
  source = _source(11)
  parts = [_train(source, process_index=i, process_count=2) for i in range(2)]
  for whole, *pieces in zip(_train(source), *parts):
    assert pieces[0]['image'].shape[0] == 2
    for key in whole:
      np.testing.assert_array_equal(
        whole[key], np.concatenate([p[key] for p in pieces])
      )
  evals = [
    _take(data.eval_batches(source, batch_size=4, process_index=i, process_count=2), 9)
    for i in range(2)
  ]
  for whole, *pieces in zip(_take(data.eval_batches(source, batch_size=4), 9), *evals):
    for key in whole:
      np.testing.assert_array_equal(
        whole[key], np.concatenate([p[key] for p in pieces])
      )


def test_batch_size_must_divide_among_processes() -> None:
  with pytest.raises(ValueError, match='batch_size=5.*process_count=2'):
    data.train_batches(
      _source(),
      batch_size=5,
      seed=0,
      start_step=0,
      crop_padding=0,
      flip=False,
      process_count=2,
    )


def test_eval_batches_cover_split_once_with_mask() -> None:
  source = _source(10)
  batches = _take(data.eval_batches(source, batch_size=4), 99)
  assert len(batches) == 3 and all(b['image'].shape == (4, 6, 5, 3) for b in batches)
  masks = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert masks.dtype == np.float32 and masks.sum() == 10
  np.testing.assert_array_equal(labels[masks == 1], np.arange(10))
  np.testing.assert_array_equal(labels[masks == 0], [9, 9])


def test_steps_per_epoch() -> None:
  assert data.steps_per_epoch(10, 4) == 2
  with pytest.raises(ValueError, match='batch_size=11'):
    data.steps_per_epoch(10, 11)


def test_prefetch_thread_stops_when_closed() -> None:
  iterator = data.train_batches(
    _source(), batch_size=4, seed=0, start_step=0, crop_padding=0, flip=False
  )
  next(iterator)
  threads = [t for t in threading.enumerate() if t.name == 'data-prefetch']
  assert threads and all(t.daemon for t in threads)
  iterator.close()
  for thread in threads:
    thread.join(timeout=2)
  assert not any(t.is_alive() for t in threads)


def test_prefetch_reraises_source_errors() -> None:
  class Broken(data.ArraySource):
    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      raise RuntimeError('disk on fire')

  source = _source()
  iterator = data.eval_batches(Broken(source.images, source.labels), batch_size=4)
  with pytest.raises(RuntimeError, match='disk on fire'):
    next(iterator)


@st.composite
def _sizes(draw: st.DrawFn) -> tuple[int, int]:
  num_examples = draw(st.integers(1, 300))
  return num_examples, draw(st.integers(1, min(num_examples, 64)))


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(_sizes(), st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_each_training_epoch_draws_distinct_indices(
  sizes: tuple[int, int], seed: int, epoch: int
) -> None:
  num_examples, batch_size = sizes
  steps = data.steps_per_epoch(num_examples, batch_size)
  batches = [
    data.train_batch_indices(num_examples, batch_size, seed, step)
    for step in range(epoch * steps, (epoch + 1) * steps)
  ]
  indices = np.concatenate(batches)
  assert all(len(batch) == batch_size for batch in batches)
  assert len(np.unique(indices)) == len(indices) == steps * batch_size
  assert indices.min() >= 0 and indices.max() < num_examples


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(st.integers(1, 300), st.integers(1, 64))
def test_eval_indices_cover_every_example_once(
  num_examples: int, batch_size: int
) -> None:
  batches = [
    data.eval_batch_indices(num_examples, batch_size, b)
    for b in range(-(-num_examples // batch_size))
  ]
  indices = np.concatenate([i for i, _ in batches])
  masks = np.concatenate([m for _, m in batches])
  np.testing.assert_array_equal(indices[masks == 1], np.arange(num_examples))
  assert indices.max() < num_examples and len(masks) - masks.sum() < batch_size


@hypothesis.settings(deadline=None)
@hypothesis.given(st.integers(1, 8), st.integers(1, 16))
def test_process_slices_partition_the_batch(
  process_count: int, per_process: int
) -> None:
  batch_size = process_count * per_process
  slices = [
    data._process_slice(batch_size, i, process_count) for i in range(process_count)
  ]
  covered = np.concatenate([np.arange(batch_size)[part] for part in slices])
  np.testing.assert_array_equal(covered, np.arange(batch_size))


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not CIFAR10.exists(), reason=f'{CIFAR10} is absent')
def test_shared_cifar10_archive(tmp_path: Path) -> None:
  start = time.perf_counter()
  dataset = _load(CIFAR10, tmp_path, image_size=32)
  decoded = time.perf_counter() - start
  assert (len(dataset.train), len(dataset.test), dataset.num_classes) == (
    50000,
    10000,
    10,
  )
  np.testing.assert_array_equal(np.bincount(dataset.train.labels), [5000] * 10)
  start = time.perf_counter()
  cached = _load(CIFAR10, tmp_path, image_size=32)
  assert time.perf_counter() - start < decoded / 4
  np.testing.assert_array_equal(cached.test.images, dataset.test.images)


def test_data_paths_resolve_from_anywhere(tmp_path, monkeypatch):
  """`../shared/...` means the shared folder beside the project, from any working
  directory; the environment variable moves it; other relative paths prefer the cwd."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(data.SHARED_DIR_ENV, raising=False)
  shared = data.PROJECT_ROOT.parent / 'shared'
  assert data.resolve_path('../shared/data/x.tar') == shared / 'data' / 'x.tar'
  monkeypatch.setenv(data.SHARED_DIR_ENV, str(tmp_path / 'elsewhere'))
  assert data.resolve_path('../shared/data/x.tar') == tmp_path / 'elsewhere/data/x.tar'
  assert data.resolve_path('configs') == data.PROJECT_ROOT / 'configs'
  (tmp_path / 'configs').mkdir()
  assert data.resolve_path('configs') == tmp_path / 'configs'
