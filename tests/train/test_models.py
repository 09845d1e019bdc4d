"""Tests for train.models: sizes against the literature, widths, stats, dtypes.

Big models are only traced (jax.eval_shape); forward passes use tiny inputs.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from train import models
from train.models import stats


def abstract_init(model: nn.Module, size: int):
  """Variables as shape structs, for a (1, size, size, 3) input."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def kernel_paths(params) -> list[str]:
  """Parameter paths of all kernels, minus '/kernel'."""
  flat = traverse_util.flatten_dict(params, sep='/')
  return [k[:-len('/kernel')] for k in flat if k.endswith('/kernel')]


def slim(name: str) -> dict[str, int]:
  """Every conv 8 wide: few distinct shapes, so little to compile."""
  return {key: 8 for key in models.default_widths(name)}


def check_logits(logits: jax.Array, shape: tuple[int, int]) -> None:
  """Float32 logits of the given shape, all finite."""
  assert logits.shape == shape and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


# Literature: He et al. 2016 Table 6 (0.27M, 0.46M, 0.85M, 1.7M), torchvision
# (11.69M, 25.56M), Li et al. 2017 VGG-16 (1.5e7); BN scale and bias counted.
PARAM_COUNTS = [
    ('resnet20', 10, 'A', 269_722, 0.27),
    ('resnet32', 10, 'A', 464_154, 0.46),
    ('resnet56', 10, 'A', 853_018, 0.85),
    ('resnet110', 10, 'A', 1_727_962, 1.73),
    ('resnet20', 10, 'B', 272_474, 0.27),
    ('resnet18', 1000, 'A', 11_689_512, 11.69),
    ('resnet50', 1000, 'A', 25_557_032, 25.56),
    ('vgg16', 10, 'A', 14_724_042, 14.72),
]


@pytest.mark.parametrize('name,classes,shortcut,count,millions', PARAM_COUNTS)
def test_param_counts_match_literature(name, classes, shortcut, count,
                                       millions):
  model = models.build_model(name, classes, shortcut=shortcut)
  size = 224 if classes == 1000 else 32
  params = abstract_init(model, size)['params']
  assert stats.count_params(params) == count
  assert round(count / 1e6, 2) == millions


# Literature MACs: ResNet-20 4.08e7 (He Y. et al. 2018, SFP), ResNet-56 1.25e8
# and VGG-16 3.13e8 (Li et al. 2017), torchvision ResNet-18 1.81G, -50 4.09G.
MACS = [
    ('resnet20', 10, 32, 40_551_040, 40.8e6),
    ('resnet56', 10, 32, 125_485_696, 1.25e8),
    ('resnet18', 1000, 224, 1_814_073_344, 1.81e9),
    ('resnet50', 1000, 224, 4_089_184_256, 4.09e9),
    ('vgg16', 10, 32, 313_201_664, 3.13e8),
]


@pytest.mark.parametrize('name,classes,size,macs,literature', MACS)
def test_macs_match_literature(name, classes, size, macs, literature):
  model = models.build_model(name, classes)
  layers = stats.layer_stats(model, abstract_init(model, size),
                             (1, size, size, 3))
  assert layers[-1].output_shape == (1, classes)
  total = stats.total_macs(layers)
  assert total == macs
  assert abs(total / literature - 1) < 0.02


@pytest.mark.parametrize('name,shortcut', [('resnet20', 'A'), ('resnet20', 'B'),
                                           ('vgg16', 'A'), ('resnet50', 'A')])
def test_default_widths_name_every_conv_kernel(name, shortcut):
  model = models.build_model(name, 10, shortcut=shortcut)
  convs = set(kernel_paths(abstract_init(model, 32)['params'])) - {'head'}
  assert set(models.default_widths(name, shortcut=shortcut)) == convs
  for group in models.stream_groups(name, shortcut=shortcut):
    assert set(group) <= convs


def test_stream_groups():
  assert models.stream_groups('vgg16') == []
  assert models.stream_groups('resnet20')[0] == ['stem_conv'] + [
      f'stage1_block{b}/conv2' for b in range(3)]
  assert models.stream_groups('resnet20', 'B')[1][-1] == (
      'stage2_block0/shortcut_conv')
  assert 'stem_conv' in models.stream_groups('resnet18')[0]
  assert models.stream_groups('resnet50')[0] == [
      'stage1_block0/conv3', 'stage1_block0/shortcut_conv',
      'stage1_block1/conv3', 'stage1_block2/conv3']


def test_name_routing_shortcuts_and_depths():
  for name in ('resnet8', 'resnet56'):
    assert isinstance(models.build_model(name, 10), models.CifarResNet)
  for name in ('resnet50', 'resnet152'):
    assert isinstance(models.build_model(name, 10), models.ImageNetResNet)
  assert isinstance(models.build_model('vgg16', 10), models.CifarVGG)
  with pytest.raises(ValueError, match="resnet20: shortcut.*'C'"):
    models.build_model('resnet20', 10, shortcut='C')
  with pytest.raises(ValueError, match='resnet21: a CIFAR ResNet needs'):
    models.CifarResNet(21, 10).default_widths()
  with pytest.raises(ValueError, match='resnet20: an ImageNet ResNet needs'):
    models.ImageNetResNet(20, 10).default_widths()
  assert len(models.CifarResNet(50, 10).default_widths()) == 49


@pytest.mark.parametrize('name', ['resnet21', 'resnet', 'vgg19', 'ResNet20'])
def test_unknown_name_lists_known_names(name):
  with pytest.raises(ValueError, match='known: vgg16, resnet18') as info:
    models.build_model(name, 10)
  assert repr(name) in str(info.value)


@pytest.mark.parametrize('shortcut', ['A', 'B'])
def test_cifar_forward_train_mode_and_bfloat16(shortcut):
  model = models.build_model('resnet8', 10, shortcut=shortcut)
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'])
  check_logits(logits, (2, 10))
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
      variables['batch_stats'])
  half = models.build_model('resnet8', 10, shortcut=shortcut,
                            dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree.leaves(abstract_init(half, 8)))
  check_logits(half.apply(variables, x, train=False), (2, 10))


def test_cifar_width_overrides_change_shapes():
  widths = {'stage1_block0/conv1': 5, 'stage2_block0/conv2': 41}
  model = models.build_model('resnet8', 10, widths=widths)
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  params = variables['params']
  assert params['stage1_block0']['conv1']['kernel'].shape == (3, 3, 16, 5)
  assert params['stage1_block0']['conv2']['kernel'].shape == (3, 3, 5, 16)
  assert params['stage2_block0']['conv2']['kernel'].shape == (3, 3, 32, 41)
  assert params['stage3_block0']['conv1']['kernel'].shape == (3, 3, 41, 64)
  assert model.apply(variables, x, train=False).shape == (2, 10)


def test_vgg_and_imagenet_width_overrides_change_shapes():
  vgg = models.build_model('vgg16', 10, widths={'conv0': 7, 'conv12': 100})
  params = abstract_init(vgg, 32)['params']
  assert params['conv1']['kernel'].shape == (3, 3, 7, 64)
  assert params['head']['kernel'].shape == (100, 10)
  stream = {k: 32 for k in models.stream_groups('resnet18')[0]}
  resnet = models.build_model('resnet18', 10, widths=stream)
  params = abstract_init(resnet, 32)['params']
  assert params['stem_conv']['kernel'].shape == (7, 7, 3, 32)
  assert params['stage2_block0']['shortcut_conv']['kernel'].shape == (
      1, 1, 32, 128)


def test_bad_widths_keys_and_values_raise():
  with pytest.raises(ValueError, match='stage1_block0/conv9.*names no conv'
                     ) as info:
    models.build_model('resnet20', 10, widths={'stage1_block0/conv9': 8})
  assert "'stage1_block0/conv1'" in str(info.value)
  with pytest.raises(ValueError, match="'head' names no conv"):
    models.build_model('vgg16', 10, widths={'head': 5})
  for value in (0, -3, 2.5, True, '8'):
    with pytest.raises(ValueError, match="vgg16: width of 'conv3' must be"):
      models.build_model('vgg16', 10, widths={'conv3': value})


def test_stream_width_errors_name_keys_and_blocks():
  with pytest.raises(ValueError, match="'stem_conv' .* 'stage1_block1/conv2'"):
    models.build_model('resnet20', 10, widths={'stage1_block1/conv2': 8})
  with pytest.raises(ValueError, match="'stage1_block0/conv3' .* "
                     "'stage1_block0/shortcut_conv'"):
    models.build_model('resnet50', 10, widths={'stage1_block0/conv3': 128})
  consistent = {k: 24 for k in models.stream_groups('resnet20')[1]}
  models.build_model('resnet20', 10, widths=consistent)
  narrow = {'stage3_block0/conv2': 16}
  with pytest.raises(ValueError, match='resnet8: stage3_block0 zero-pads'):
    models.build_model('resnet8', 10, widths=narrow)
  narrow['stage3_block0/shortcut_conv'] = 16
  models.build_model('resnet8', 10, widths=narrow, shortcut='B')


def test_load_and_save_widths_round_trip(tmp_path):
  widths = {'stage1_block0/conv1': 8, 'conv0': np.int64(3), 'b': 2}
  path = tmp_path / 'widths.json'
  models.save_widths(str(path), widths)
  assert os.listdir(tmp_path) == ['widths.json']
  assert list(json.loads(path.read_text())) == [
      'b', 'conv0', 'stage1_block0/conv1']
  assert models.load_widths(str(path)) == widths
  assert models.load_widths('{"stage1_block0/conv1": 8}') == {
      'stage1_block0/conv1': 8}
  assert models.load_widths('') == {}


@pytest.mark.parametrize('spec,match', [
    ('no/such/file.json', 'neither inline JSON nor a file'),
    ('{"a": ', 'not valid JSON'),
    ('{"a": 1.5}', "'a' must be an integer"),
    ('{"a": 0}', "'a' must be >= 1")])
def test_load_widths_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    models.load_widths(spec)


class Wrapper(nn.Module):
  """A CIFAR ResNet under a submodule, to check nested paths."""
  @nn.compact
  def __call__(self, x, train: bool):
    return models.CifarResNet(8, 10, shortcut='B', name='net')(x, train)


@pytest.mark.parametrize('model', [
    models.build_model('resnet20', 10), models.build_model('vgg16', 10),
    models.build_model('resnet50', 1000), Wrapper()],
                         ids=['resnet20', 'vgg16', 'resnet50', 'wrapped'])
def test_layer_stats_paths_are_kernel_paths(model):
  variables = abstract_init(model, 32)
  paths = [s.path for s in stats.layer_stats(model, variables, (1, 32, 32, 3))]
  assert sorted(paths) == sorted(kernel_paths(variables['params']))
  assert len(set(paths)) == len(paths)


def test_layer_stat_fields():
  model = models.build_model('resnet20', 10)
  layers = {s.path: s for s in stats.layer_stats(
      model, abstract_init(model, 32), (2, 32, 32, 3))}
  assert layers['stage2_block0/conv1'] == stats.LayerStat(
      'stage2_block0/conv1', 'conv', (3, 3, 16, 32), (2, 32, 32, 16),
      (2, 16, 16, 32), 1, 3 * 3 * 16 * 32 * 16 * 16, 4608)
  assert layers['head'] == stats.LayerStat(
      'head', 'dense', (64, 10), (2, 64), (2, 10), 1, 640, 650)


def test_grouped_conv_macs():
  model = nn.Conv(8, (3, 3), feature_group_count=4)
  variables = model.init(jax.random.key(0), jnp.ones((1, 5, 5, 8)))
  [stat] = stats.layer_stats(model, variables, (1, 5, 5, 8), call_kwargs={})
  assert stat.path == ''  # a top-level module's kernel is params['kernel']
  assert (stat.feature_group_count, stat.macs, stat.params) == (
      4, 3 * 3 * 2 * 8 * 5 * 5, 3 * 3 * 2 * 8 + 8)


def test_total_macs_with_masks():
  model = models.build_model('resnet8', 10)
  layers = stats.layer_stats(model, abstract_init(model, 32), (1, 32, 32, 3))
  ones = {s.path: np.ones(s.kernel_shape) for s in layers}
  half = {s.path: np.broadcast_to(np.arange(s.kernel_shape[-1]) % 2,
                                  s.kernel_shape) for s in layers}
  total = stats.total_macs(layers)
  assert stats.total_macs(layers, ones) == total
  assert stats.total_macs(layers, half) == total // 2
  with pytest.raises(ValueError, match="'head'"):
    stats.total_macs(layers, {'head': np.ones((3, 3))})
  with pytest.raises(ValueError, match='nope'):
    stats.total_macs(layers, {'nope': np.ones((3, 3))})


def test_imagenet_zero_init_and_forward():
  x = jnp.ones((2, 32, 32, 3))
  variables = models.build_model('resnet18', 10, widths=slim('resnet18')).init(
      jax.random.key(0), x, train=False)
  params = variables['params']
  assert not np.any(params['stage1_block0']['bn2']['scale'])
  assert np.all(params['stage1_block0']['bn1']['scale'] == 1)
  for dtype in (jnp.float32, jnp.bfloat16):
    model = models.build_model('resnet18', 10, slim('resnet18'), dtype)
    check_logits(model.apply(variables, x, train=False), (2, 10))


def test_vgg_bfloat16_forward():
  model = models.build_model('vgg16', 10, slim('vgg16'), jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  check_logits(model.apply(variables, x, train=False), (2, 10))
  with pytest.raises(ValueError, match='max pool after conv1 needs even'):
    model.apply(variables, jnp.ones((1, 5, 5, 3)), train=False)



def test_vgg_conv_implementations_agree_and_share_parameters():
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  built = {impl: models.build_model('vgg16', 10, slim('vgg16'), conv_impl=impl)
           for impl in ('xla', 'patches', 'auto')}
  variables = built['xla'].init(jax.random.key(0), x, train=False)
  for impl in ('patches', 'auto'):
    assert jax.tree.structure(built[impl].init(jax.random.key(0), x, train=False)) == \
        jax.tree.structure(variables)

  def loss_and_grads(model):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return jnp.sum(logits ** 2)
    return jax.jit(jax.value_and_grad(loss))(variables['params'])

  reference = loss_and_grads(built['xla'])
  for impl in ('patches', 'auto'):
    value, grads = loss_and_grads(built[impl])
    np.testing.assert_allclose(value, reference[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=1e-4 * float(np.abs(b).max()) + 1e-7), grads, reference[1])


def test_patches_only_where_they_pay():
  from train.models import common
  assert common.use_patches('patches', 1024) and not common.use_patches('xla', 4)
  assert common.use_patches('auto', 4) == (jax.default_backend() == 'cpu')
  assert not common.use_patches('auto', 16)
  with pytest.raises(ValueError, match='model.conv_impl'):
    common.use_patches('fast', 4)
