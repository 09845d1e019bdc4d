"""Segmentation: models through the channel graph, CCI's kernels, data sources, mIoU."""

import dataclasses
import itertools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from c2s2 import graph as graph_lib
from configs import quickstart_seg
from train import data, methods, models, seg_data, tasks
from train.models import segmentation, stats

# Models ----------------------------------------------------------------------------


def _graph(name):
  model = models.build_model(name, 11)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                train=False))
  return variables, graph_lib.trace_channel_graph(
      lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize('name', ['unet', 'deeplab'])
def test_every_conv_but_the_head_makes_a_prunable_group(name):
  _, graph = _graph(name)
  widths = models.default_widths(name)
  producers = {p for g in graph.groups for p in g.producers}
  assert producers == {*widths, 'head'}
  refused = [g for g in graph.groups if not g.prunable]
  assert [g.name for g in refused] == ['head']
  assert refused[0].reason == 'model output (head)'
  if name == 'deeplab':  # Residual streams: each stage's summed convs share a group.
    joined = sorted(sorted(g.producers) for g in graph.groups if g.joined)
    assert joined == sorted(sorted(g) for g in models.stream_groups(name))


def test_unet_skip_concatenation_couples_the_decoder_input_at_an_offset():
  _, graph = _graph('unet')
  dec0_input = {c.offset for g in graph.groups for c in g.couplings
                if c.path == ('dec0', 'conv1', 'kernel') and c.axis == 2}
  assert dec0_input == {0, 16}  # up0's 16 channels, then enc0's.


@pytest.mark.parametrize('size_in,size_out', [(4, 8), (5, 20)])
def test_resize_bilinear_matches_jax_image_resize(size_in, size_out):
  x = np.random.default_rng(0).normal(size=(2, size_in, size_in + 1, 3)).astype(np.float32)
  shape = (2, size_out, size_out + 2, 3)
  expected = jax.jit(lambda x: jax.image.resize(x, shape, 'bilinear'))(x)
  ours = jax.jit(lambda x: segmentation.resize_bilinear(x, *shape[1:3]))(x)
  np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize('name,side', [('unet', 18), ('deeplab', 15)])
def test_models_refuse_inputs_their_strides_cannot_take(name, side):
  model = models.build_model(name, 3)
  with pytest.raises(ValueError, match=f'{name}: input of shape'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)),
                                      train=False))


def test_cci_groups_every_divisible_kernel_transposed_convs_included():
  variables, _ = _graph('unet')
  config = quickstart_seg.get_config('cci')
  spec, decisions = methods.cci_spec(config.sparsity, variables['params'], 100)
  assert {'up1/kernel', 'up0/kernel', 'head/kernel'} <= set(spec.grouped)
  dense = {d.path for d in decisions if not d.grouped and d.path.endswith('/kernel')}
  assert dense == {'enc0/conv1/kernel'}  # c_in = 3 (RGB).


def test_transposed_convs_count_their_macs_per_input_position():
  model = models.build_model('unet', 11)
  variables, _ = _graph('unet')
  layers = {l.path: l for l in stats.layer_stats(model, variables, (1, 16, 16, 3))}
  assert layers['up1'].kind == 'conv_transpose'
  assert layers['up1'].macs == 2 * 2 * 64 * 32 * 4 * 4  # kernel x 4x4 input positions
  assert layers['up0'].macs == 2 * 2 * 32 * 16 * 8 * 8
  assert layers['up1'].output_shape == (1, 8, 8, 32)


# Metrics ---------------------------------------------------------------------------


def test_miou_of_a_hand_computed_case():
  task = tasks.Task(num_classes=3, ignore_label=255)
  labels = jnp.array([[[0, 0, 1, 1], [2, 2, 255, 1]]])  # one 2x4 mask
  predictions = jnp.array([[[0, 1, 1, 1], [2, 0, 2, 0]]])
  logits = jax.nn.one_hot(predictions, 3) * 5.0
  sums = jax.device_get(task.eval_sums(logits, labels, jnp.ones(1)))
  # Counted pixels (label, prediction): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,0).
  np.testing.assert_array_equal(sums['confusion'], [[1, 1, 0], [1, 2, 0], [1, 0, 1]])
  result = tasks.summarize(sums, ['bg', 'a', 'b'])
  # IoU: class 0: 1 / (2 + 3 - 1) = 1/4; class 1: 2 / (3 + 3 - 2) = 1/2; class 2: 1/2.
  assert result['iou/bg'] == pytest.approx(0.25)
  assert result['iou/a'] == pytest.approx(0.5) and result['iou/b'] == pytest.approx(0.5)
  assert result['miou'] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
  assert result['top1'] == pytest.approx(4 / 7)
  # The padded example of a last batch (mask 0) counts nowhere.
  padded = task.eval_sums(jnp.concatenate([logits, logits]),
                          jnp.concatenate([labels, labels]), jnp.array([1.0, 0.0]))
  np.testing.assert_array_equal(padded['confusion'], sums['confusion'])


def test_class_weights_make_the_loss_a_weighted_mean_of_a_hand_computed_case():
  # Pixels (label; logits): a (0; [ln 3, 0]) b (1; [0, 0]) c (1; [0, ln 3]) d ignored.
  labels = jnp.array([[[0, 1], [1, 9]]])
  logits = jnp.log(jnp.array([[[[3.0, 1.0], [1.0, 1.0]], [[1.0, 3.0], [5.0, 1.0]]]]))
  # Cross-entropies: a -ln(3/4), b -ln(1/2), c -ln(3/4); d counts nowhere.
  ce_a, ce_b, ce_c = -np.log(0.75), -np.log(0.5), -np.log(0.75)
  plain = tasks.Task(2, 9).loss(logits, labels)
  assert plain == pytest.approx((ce_a + ce_b + ce_c) / 3, rel=1e-6)
  weighted = tasks.Task(2, 9, (0.1, 1.0)).loss(logits, labels)
  assert weighted == pytest.approx((0.1 * ce_a + ce_b + ce_c) / 2.1, rel=1e-6)
  # Background weighted 0: the mean over the digit pixels only.
  assert tasks.Task(2, 9, (0.0, 1.0)).loss(logits, labels) == pytest.approx(
      (ce_b + ce_c) / 2, rel=1e-6)
  # The evaluation loss and metrics stay unweighted.
  sums = tasks.Task(2, 9, (0.1, 1.0)).eval_sums(logits, labels, jnp.ones(1))
  assert sums['loss_sum'] / sums['count'] == pytest.approx(float(plain), rel=1e-6)
  # Classification: one label per example, weighted the same way.
  flat = tasks.Task(class_weights=(0.1, 1.0)).loss(logits[0, 0], labels[0, 0])
  assert flat == pytest.approx((0.1 * ce_a + ce_b) / 1.1, rel=1e-6)


@pytest.mark.parametrize('weights', [(1.0,), (1.0, -0.5, 1.0), (0.0, 0.0, 0.0)])
def test_class_weights_that_do_not_fit_the_classes_name_the_key(weights):
  dataset = data.ImageDataset(None, None, ('bg', 'a', 'b'), np.zeros(3), np.ones(3),
                              ignore_label=255)
  with pytest.raises(ValueError, match=r'data\.class_weights.*3: bg, a, b'):
    tasks.task_for(dataset, weights)


def test_task_for_reads_the_kind_of_labels_from_the_dataset():
  segmentation = data.ImageDataset(None, None, ('bg', 'a'), np.zeros(3), np.ones(3),
                                   ignore_label=255)
  assert tasks.task_for(segmentation, [0.1, 1]) == tasks.Task(2, 255, (0.1, 1.0))
  assert tasks.task_for(segmentation) == tasks.Task(2, 255)
  classification = dataclasses.replace(segmentation, ignore_label=None)
  assert tasks.task_for(classification) is tasks.CLASSIFICATION
  assert tasks.task_for(classification, (2, 1)) == tasks.Task(class_weights=(2.0, 1.0))


def test_a_class_absent_from_labels_and_predictions_has_no_iou():
  confusion = np.array([[3, 0, 0], [0, 0, 0], [1, 0, 2]])
  result = tasks.summarize({'confusion': confusion, 'correct': 5, 'count': 6,
                            'loss_sum': 1.0})
  assert 'iou/1' not in result and result['miou'] == pytest.approx((3 / 4 + 2 / 3) / 2)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.int32, (2, 3, 5), elements=st.sampled_from([0, 1, 2, 3, 9])),
       hnp.arrays(np.int32, (2, 3, 5), elements=st.integers(0, 3)))
def test_confusion_counts_every_pixel_but_the_ignored_ones(labels, predictions):
  task = tasks.Task(num_classes=4, ignore_label=9)
  sums = jax.device_get(task.eval_sums(jax.nn.one_hot(predictions, 4), labels, jnp.ones(2)))
  counted = labels != 9
  assert sums['confusion'].sum() == sums['count'] == counted.sum()
  assert sums['correct'] == np.sum((labels == predictions) & counted)
  if counted.any():
    perfect = tasks.summarize(jax.device_get(task.eval_sums(
        jax.nn.one_hot(np.where(counted, labels, 0), 4), labels, jnp.ones(2))))
    assert perfect['miou'] == 1.0 and perfect['top1'] == 1.0
    assert 0.0 <= tasks.summarize(sums)['miou'] <= 1.0
  loss = task.loss(jax.nn.one_hot(predictions, 4), labels)
  assert np.isfinite(loss)


# Composed digits -------------------------------------------------------------------


def _digits_config(**overrides):
  config = quickstart_seg.get_config().data
  config.unlock()
  config.update(image_size=16, canvases_train=40, canvases_test=8, held_out=8,
                scale_range=(0.7, 1.4), **overrides)
  return config


@pytest.fixture(scope='module')
def digits():
  return data.load_dataset(_digits_config())


def test_composed_canvases_are_a_function_of_seed_split_and_index():
  image, mask = seg_data.compose_canvas(3, 'train', 5, 24, 3)
  again = seg_data.compose_canvas(3, 'train', 5, 24, 3)
  np.testing.assert_array_equal(image, again[0])
  np.testing.assert_array_equal(mask, again[1])
  assert not np.array_equal(image, seg_data.compose_canvas(4, 'train', 5, 24, 3)[0])
  assert not np.array_equal(image, seg_data.compose_canvas(3, 'test', 5, 24, 3)[0])
  assert image.shape == (24, 24, 3) and image.dtype == np.uint8
  labelled = set(np.unique(mask)) - {0}
  assert labelled and labelled <= set(range(1, 11))
  # Labelled pixels are ink: brighter than the background's noise.
  assert image[mask > 0].max(-1).min() > image[mask == 0].max(-1).mean()


def test_digits_dataset_is_deterministic_with_11_classes(digits):
  again = data.load_dataset(_digits_config())
  for split in ('train', 'test', 'held_out'):
    a, b = getattr(digits, split), getattr(again, split)
    for x, y in zip(a.get_batch(np.arange(len(a))), b.get_batch(np.arange(len(b)))):
      np.testing.assert_array_equal(x, y)
  assert digits.num_classes == 11 and digits.ignore_label == 255
  assert digits.image_shape == (16, 16, 3)
  assert len(digits.train) == 32 and len(digits.held_out) == 8


def test_training_batches_resume_where_they_stopped(digits):
  def batches(start):
    return data.train_batches(digits.train, batch_size=8, seed=1, start_step=start,
                              crop_padding=4, flip=True)

  whole = list(itertools.islice(batches(0), 7))
  resumed = list(itertools.islice(batches(4), 3))
  for a, b in zip(whole[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  first = whole[0]
  assert first['image'].shape == (8, 16, 16, 3) and first['label'].shape == (8, 16, 16)
  assert not np.array_equal(whole[0]['image'], whole[4]['image'])


def _coded_source(size=8, crop=6, scale_range=(1.0, 1.0)):
  """A source whose image's red channel is 10 * mask + 10, so pairs can be checked."""
  rng = np.random.default_rng(0)
  masks = rng.integers(0, 3, (4, size, size)).astype(np.int32)
  images = np.repeat((10 * masks + 10)[..., None], 3, -1).astype(np.uint8)
  fetch = lambda i: (images[i], masks[i], f'coded {i}')
  return seg_data.SegmentationSource(fetch, 4, (size, size), 3, 255, crop, scale_range)


@pytest.mark.parametrize('scale_range', [(1.0, 1.0), (0.5, 2.0)])
def test_joint_augmentation_moves_image_and_mask_together(scale_range):
  source = _coded_source(scale_range=scale_range)
  images, masks = source.get_batch(np.arange(4))
  seen_flip = False
  for seed in range(12):
    out_images, out_masks = source.augment_pair(images, masks, np.arange(4) + 10 * seed,
                                                flip=True)
    assert out_images.shape == (4, 6, 6, 3) and out_masks.shape == (4, 6, 6)
    inside = out_masks != 255
    if scale_range == (1.0, 1.0):  # No resampling: every pixel keeps its pair.
      assert np.all(out_images[..., 0][~inside] == 0)  # Outside the canvas: ignored.
      np.testing.assert_array_equal(out_images[..., 0][inside], 10 * out_masks[inside] + 10)
      seen_flip |= any(not _is_window(m, masks[i]) for i, m in enumerate(out_masks))
    else:
      assert set(np.unique(out_masks)) <= {0, 1, 2, 255}  # Nearest: no blended labels.
  assert seen_flip or scale_range != (1.0, 1.0)


def _is_window(crop, mask):
  """Whether `crop` (ignore outside) is an unflipped window of `mask`."""
  side = crop.shape[0]
  padded = np.pad(mask, side, constant_values=255)
  return any(np.array_equal(padded[r:r + side, c:c + side], crop)
             for r in range(padded.shape[0] - side + 1)
             for c in range(padded.shape[1] - side + 1))


def test_the_held_out_part_of_a_segmentation_split_keeps_its_augmentation(digits):
  assert digits.train.augment_pair.__self__ is digits.train.source
  with pytest.raises(AttributeError):
    data.Subset(data.ArraySource(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]),
                np.arange(2)).augment_pair  # pylint: disable=expression-not-assigned


# Folders ---------------------------------------------------------------------------


def _write_folder(root, masks, sizes=None, classes=('bg', 'a', 'b')):
  (root / 'classes.txt').write_text('\n'.join(classes) + '\n')
  for split in ('train', 'test'):
    (root / split / 'images').mkdir(parents=True)
    (root / split / 'masks').mkdir(parents=True)
    for i, mask in enumerate(masks):
      size = (sizes or {}).get(i, mask.shape[::-1])
      Image.new('RGB', size, (i * 40, 0, 0)).save(root / split / 'images' / f'ex{i}.png')
      Image.fromarray(mask.astype(np.uint8)).save(root / split / 'masks' / f'ex{i}.png')


def _folder_config(root):
  config = ml_collections.ConfigDict(_digits_config().to_dict())
  config.update(source='seg_folder', path=str(root), image_size=8, held_out=0)
  return config


def test_folder_examples_are_padded_to_a_canvas_of_ignored_pixels(tmp_path):
  _write_folder(tmp_path, [np.full((20, 10), 1), np.array([[0, 2, 255]] * 5)])
  dataset = data.load_dataset(_folder_config(tmp_path))
  images, masks = dataset.test.get_batch(np.arange(2))
  assert images.shape == (2, 32, 16, 3) and dataset.class_names == ('bg', 'a', 'b')
  assert np.all(masks[0, :20, :10] == 1) and np.all(masks[0, 20:] == 255)
  assert np.all(masks[1, :5, :3] == [0, 2, 255]) and np.all(masks[1, 5:] == 255)
  assert np.all(images[1, :5, :3, 0] == 40) and np.all(images[1, 5:] == 0)


@pytest.mark.parametrize('mask,sizes,message', [
    (np.full((6, 6), 7), None, r'ex1\.png: mask values \[7\] are outside the 3 classes'),
    (np.zeros((6, 6)), {1: (6, 5)}, r'ex1\.png: mask of shape \(6, 6\) for an image of 5x6'),
])
def test_a_bad_mask_names_its_example(tmp_path, mask, sizes, message):
  _write_folder(tmp_path, [np.zeros((6, 6)), mask], sizes)
  with pytest.raises(ValueError, match=message):
    data.load_dataset(_folder_config(tmp_path))


def test_a_missing_mask_or_class_list_is_named(tmp_path):
  _write_folder(tmp_path, [np.zeros((6, 6))])
  (tmp_path / 'test' / 'masks' / 'ex0.png').unlink()
  with pytest.raises(ValueError, match=r'ex0\.png: no mask .*test/masks/ex0\.png'):
    data.load_dataset(_folder_config(tmp_path))
  (tmp_path / 'classes.txt').unlink()
  with pytest.raises(FileNotFoundError, match='classes.txt'):
    data.load_dataset(_folder_config(tmp_path))


def test_tfds_masks_are_checked_and_name_their_example():
  tfds = pytest.importorskip('tensorflow_datasets')
  config = ml_collections.ConfigDict(_digits_config().to_dict())
  config.update(source='seg_tfds', name='oxford_iiit_pet', num_classes=4, canvas_size=64,
                held_out=0)
  # Mock examples draw image and mask sides independently: they do not match.
  with tfds.testing.mock_data(num_examples=3), pytest.raises(
      ValueError, match=r'example oxford_iiit_pet train 0: mask of shape \(\d+, \d+\)'):
    data.load_dataset(config)
  config.num_classes = 0
  with pytest.raises(ValueError, match="data.num_classes must be set"):
    data.load_dataset(config)
