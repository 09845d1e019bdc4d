"""The per-example (ImageNet) pipeline: Inception crop, workers, resume, damaged files."""

import re
from pathlib import Path

import hypothesis
import ml_collections
import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from configs import base
from train import data, imagenet_data


def write_jpeg_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
  """root/SPLIT/CLASS/i.jpg of random sizes and content."""
  rng = np.random.default_rng(seed)
  for split, count in per_class.items():
    for cls in ('cat', 'dog'):
      (root / split / cls).mkdir(parents=True, exist_ok=True)
      for i in range(count):
        size = rng.integers(20, 90, 2)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        Image.fromarray(pixels).save(root / split / cls / f'{i}.jpg', quality=90)


def folder_config(root: Path, workers: int, threads: int = 0) -> ml_collections.ConfigDict:
  config = base.get_base_config().data
  config.update(source='folder', path=str(root), per_example=True, image_size=16,
                eval_resize=18, train_split='train', test_split='validation',
                workers=workers, worker_threads=threads)
  return config


@pytest.fixture(scope='module')
def tree(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp('jpegs')
  write_jpeg_tree(root, {'train': 8, 'validation': 2})
  return root


def first_batches(root: Path, workers: int, start_step: int, count: int,
                  threads: int = 0) -> list[dict]:
  dataset = data.load_dataset(folder_config(root, workers, threads))
  assert dataset.train.threads == threads
  batches = data.train_batches(dataset.train, batch_size=4, seed=3, start_step=start_step,
                               crop_padding=0, flip=True)
  taken = [next(batches) for _ in range(count)]
  batches.close()
  return taken


def test_batches_are_identical_across_worker_counts_threads_and_a_resume(tree):
  in_process = first_batches(tree, 0, 0, 5)  # 5 steps of 4 of 16: crosses an epoch.
  assert in_process[0]['image'].shape == (4, 16, 16, 3)
  assert in_process[0]['image'].dtype == np.uint8
  for other in (first_batches(tree, 2, 0, 5), first_batches(tree, 2, 0, 5, threads=3),
                first_batches(tree, 0, 3, 2)[-2:]):
    for a, b in zip(in_process[-len(other):], other):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
  # Augmented: no two steps, and no two images, alike.
  assert not np.array_equal(in_process[0]['image'], in_process[1]['image'])


def test_each_process_gets_its_slice_of_the_global_batch(tree):
  dataset = data.load_dataset(folder_config(tree, 0))
  whole = next(data.train_batches(dataset.train, batch_size=4, seed=3, start_step=1,
                                  crop_padding=0, flip=True))
  halves = [next(data.train_batches(dataset.train, batch_size=4, seed=3, start_step=1,
                                    crop_padding=0, flip=True, process_index=i,
                                    process_count=2)) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]),
                                whole['image'])


def test_eval_is_resize_and_center_crop(tree):
  dataset = data.load_dataset(folder_config(tree, 0))
  assert dataset.class_names == ('cat', 'dog') and len(dataset.test) == 4
  images, labels = dataset.test.get_batch(np.arange(4))
  assert images.shape == (4, 16, 16, 3) and labels.tolist() == [0, 0, 1, 1]
  path = sorted((tree / 'validation' / 'cat').iterdir())[0]
  with Image.open(path) as image:
    width, height = image.size
    scale = 18 / min(width, height)
    resized = image.convert('RGB').resize(
        (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
  left, top = (resized.width - 16) / 2, (resized.height - 16) / 2
  expected = np.asarray(resized.crop((round(left), round(top), round(left) + 16,
                                      round(top) + 16)), np.float32)
  # One resize of the crop box vs resize then crop: same pixels up to resampling.
  assert np.abs(images[0].astype(np.float32) - expected).mean() < 12


@pytest.mark.parametrize('workers', [0, 1])
def test_a_damaged_jpeg_is_named(tmp_path, workers):
  write_jpeg_tree(tmp_path, {'train': 2, 'validation': 1})
  damaged = tmp_path / 'train' / 'dog' / '1.jpg'
  whole = damaged.read_bytes()
  damaged.write_bytes(whole[:100])
  message = f'cannot decode image {re.escape(str(damaged))}: OSError'
  with pytest.raises(ValueError, match=message):  # The statistics' sample reads it.
    data.load_dataset(folder_config(tmp_path, workers))
  damaged.write_bytes(whole)
  dataset = data.load_dataset(folder_config(tmp_path, workers))
  damaged.write_bytes(whole[:100])  # Damaged after the start: training reads it.
  batches = data.train_batches(dataset.train, batch_size=4, seed=0, start_step=0,
                               crop_padding=0, flip=True)
  with pytest.raises(ValueError, match=message):
    next(batches)


@hypothesis.given(st.integers(1, 4000), st.integers(1, 4000), st.integers(0, 2**32))
def test_crop_box_lies_inside_the_image_at_an_allowed_shape(width, height, seed):
  left, top, crop_w, crop_h = imagenet_data.crop_box(
      np.random.default_rng(seed), width, height)
  assert 0 <= left and left + crop_w <= width and 0 <= top and top + crop_h <= height
  assert crop_w >= 1 and crop_h >= 1


def test_crop_box_hand_computed_fallback_for_a_thin_image():
  # 1000 x 10: every drawn crop (>= 800 px at aspect <= 4/3) is taller than 10 rows,
  # so the center crop of aspect 4/3 is taken: 13 x 10 at column (1000 - 13) // 2.
  assert imagenet_data.crop_box(np.random.default_rng(0), 1000, 10) == (493, 0, 13, 10)


def test_held_out_images_stay_encoded_and_are_never_trained_on(tree):
  config = folder_config(tree, 0)
  config.held_out = 4
  dataset = data.load_dataset(config)
  assert isinstance(dataset.train, imagenet_data.EncodedSource)
  assert isinstance(dataset.held_out, imagenet_data.EncodedSource)
  assert (len(dataset.train), len(dataset.held_out)) == (12, 4)
  held = {dataset.held_out.images[i][2] for i in range(4)}
  trained = {dataset.train.images[i][2] for i in range(12)}
  assert not held & trained and len(held | trained) == 16
  batch = next(data.train_batches(dataset.train, batch_size=4, seed=0, start_step=0,
                                  crop_padding=0, flip=True))
  assert batch['image'].shape == (4, 16, 16, 3)


def test_eval_batches_in_workers_equal_in_process(tree):
  def batches(workers):
    dataset = data.load_dataset(folder_config(tree, workers))
    return list(data.eval_batches(dataset.test, batch_size=3))

  in_process, in_workers = batches(0), batches(2)
  assert len(in_process) == 2 and in_process[1]['mask'].tolist() == [1, 0, 0]
  for a, b in zip(in_process, in_workers, strict=True):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])
