"""Dense-prediction models: a small U-Net and a DeepLab-style net on a ResNet backbone.

Both map NHWC images to per-pixel logits (N, H, W, num_classes) at the input
resolution and take the classifiers' ``widths`` (conv path -> output channels).

* ``unet``: two encoder levels and a bottleneck of two 3x3 conv-BN-ReLU each, 2x2 max
  pools, 2x2 stride-2 transposed convs (``up1``, ``up0``) whose outputs are
  concatenated with the encoder features of their resolution (skip connections), and
  a 1x1 ``head``. Inputs need sides divisible by 4.
* ``deeplab``: a CIFAR-style ResNet backbone (stem and three stages of basic blocks
  of 16, 32 and 64 channels; stage 2 strides by 2, stage 3 keeps the resolution with
  dilation 2), an ASPP-like module (a 1x1 and two dilated 3x3 branches concatenated,
  projected by ``aspp_proj``), a DeepLabv3+-style decoder (``aspp_proj`` bilinearly
  upsampled x2 and concatenated with the 1x1-reduced stage-1 features ``low_proj``,
  then ``decoder_conv``), a 1x1 ``head`` and bilinear upsampling to the input size.
  Inputs need even sides.

Bilinear resizing is written as two matrix products over the spatial axes with the
channels kept last (``resize_bilinear``), which the channel graph follows.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from train.models.common import BasicBlock, batch_norm, conv, resolve_widths

UNET_WIDTHS = (16, 32, 64)  # Level 0, level 1, bottleneck.
DEEPLAB_STAGES = (16, 32, 64)
DEEPLAB_DILATIONS = (1, 1, 2)
DEEPLAB_STRIDES = (1, 2, 1)
ASPP_WIDTH, ASPP_RATES = 32, (2, 4)
LOW_WIDTH, DECODER_WIDTH = 16, 32


def interpolation_matrix(size_out: int, size_in: int) -> np.ndarray:
  """(size_out, size_in) weights of 1-D linear interpolation, half-pixel centres
  (the sampling of `jax.image.resize(..., 'bilinear')` when upsampling)."""
  centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(size_in)[None]))
  return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """NHWC `x` bilinearly resized to height x width, the channels kept last."""
  rows = jnp.asarray(interpolation_matrix(height, x.shape[1]), x.dtype)
  cols = jnp.asarray(interpolation_matrix(width, x.shape[2]), x.dtype)
  x = jax.lax.dot_general(rows, x, (((1,), (1,)), ((), ())))  # (height, N, W, C)
  x = jax.lax.dot_general(cols, x, (((1,), (2,)), ((), ())))  # (width, height, N, C)
  return x.transpose(2, 1, 0, 3)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/2 max pool as reshape + max (faster to differentiate on XLA:CPU)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _check_sides(model: str, x: jax.Array, multiple: int) -> None:
  if x.ndim != 4 or x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(f'{model}: input of shape {x.shape}; NHWC with height and width '
                     f'divisible by {multiple} needed')


def conv_bn_relu(x: jax.Array, features: int, kernel: int, name: str, train: bool,
                 dtype: DTypeLike, dilation: int = 1) -> jax.Array:
  """Conv '<name>' (square kernel, torch padding), batch norm '<name>_bn' and ReLU.

  Call inside a compact method: the layers belong to the caller.
  """
  x = conv(features, kernel, 1, name, dtype, dilation=dilation)(x)
  return nn.relu(batch_norm(train, f'{name}_bn', dtype)(x))


class DoubleConv(nn.Module):
  """Two 3x3 conv-BN-ReLU: convs 'conv1' and 'conv2'."""
  widths: tuple[int, int]
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, features in enumerate(self.widths, start=1):
      x = conv_bn_relu(x, features, 3, f'conv{i}', train, self.dtype)
    return x


class UNet(nn.Module):
  """A small U-Net (Ronneberger et al. 2015) with batch norm; see the module docstring.

  Conv paths (widths keys): 'enc0/conv1', 'enc0/conv2', 'enc1/...', 'mid/...',
  'up1' (transposed), 'dec1/...', 'up0', 'dec0/...'; the 'head' keeps num_classes.
  """
  num_classes: int
  widths: Mapping[str, int] | None = None
  dtype: DTypeLike = jnp.float32

  def model_name(self) -> str:
    return 'unet'

  def default_widths(self) -> dict[str, int]:
    """Conv path -> output channels of the standard network."""
    level0, level1, middle = UNET_WIDTHS
    widths = {}
    for name, width in (('enc0', level0), ('enc1', level1), ('mid', middle),
                        ('dec1', level1), ('dec0', level0)):
      widths.update({f'{name}/conv{i}': width for i in (1, 2)})
    widths.update({'up1': level1, 'up0': level0})
    return widths

  def stream_groups(self) -> list[list[str]]:
    """No residual streams: skips are concatenated, not added."""
    return []

  def resolved_widths(self) -> dict[str, int]:
    return resolve_widths('unet', self.default_widths(), self.widths, [])

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    _check_sides('unet', x, 4)
    widths = self.resolved_widths()
    block = lambda name: DoubleConv((widths[f'{name}/conv1'], widths[f'{name}/conv2']),
                                    self.dtype, name=name)
    x = x.astype(self.dtype)
    skip0 = block('enc0')(x, train)
    skip1 = block('enc1')(max_pool_2x2(skip0), train)
    x = block('mid')(max_pool_2x2(skip1), train)
    for level, skip in ((1, skip1), (0, skip0)):
      x = nn.ConvTranspose(widths[f'up{level}'], (2, 2), strides=(2, 2), use_bias=False,
                           dtype=self.dtype, name=f'up{level}')(x)  # Doubles the sides.
      x = nn.relu(batch_norm(train, f'up{level}_bn', self.dtype)(x))
      x = block(f'dec{level}')(jnp.concatenate([x, skip], -1), train)
    x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


class DeepLab(nn.Module):
  """DeepLabv3+-style segmentation on a small dilated ResNet; see the module docstring.

  Attributes:
    num_classes: Classes of the per-pixel head.
    widths: Conv path -> output channels overriding some defaults, or None.
    blocks: Basic blocks per backbone stage.
    dtype: Computation dtype; parameters stay float32, logits are float32.
  """
  num_classes: int
  widths: Mapping[str, int] | None = None
  blocks: int = 1
  dtype: DTypeLike = jnp.float32

  def model_name(self) -> str:
    return 'deeplab'

  def has_projection(self, stage: int) -> bool:
    return stage > 1  # The stream widens (and stage 2 strides).

  def default_widths(self) -> dict[str, int]:
    widths = {'stem_conv': DEEPLAB_STAGES[0]}
    for stage, width in enumerate(DEEPLAB_STAGES, start=1):
      for block in range(self.blocks):
        prefix = f'stage{stage}_block{block}'
        widths.update({f'{prefix}/conv1': width, f'{prefix}/conv2': width})
        if block == 0 and self.has_projection(stage):
          widths[f'{prefix}/shortcut_conv'] = width
    branches = ['aspp_1x1', *(f'aspp_d{rate}' for rate in ASPP_RATES), 'aspp_proj']
    widths.update({name: ASPP_WIDTH for name in branches})
    widths.update({'low_proj': LOW_WIDTH, 'decoder_conv': DECODER_WIDTH})
    return widths

  def stream_groups(self) -> list[list[str]]:
    """Per stage, the conv paths whose outputs are summed in its residual stream."""
    groups = []
    for stage in range(1, len(DEEPLAB_STAGES) + 1):
      group = [f'stage{stage}_block{block}/conv2' for block in range(self.blocks)]
      if stage == 1:
        group.insert(0, 'stem_conv')
      if self.has_projection(stage):
        group.append(f'stage{stage}_block0/shortcut_conv')
      groups.append(group)
    return groups

  def resolved_widths(self) -> dict[str, int]:
    if self.blocks < 1:
      raise ValueError(f'deeplab: blocks must be >= 1, got {self.blocks}')
    return resolve_widths('deeplab', self.default_widths(), self.widths,
                          self.stream_groups())

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    _check_sides('deeplab', x, 2)
    widths = self.resolved_widths()
    height, width = x.shape[1:3]
    x = x.astype(self.dtype)
    x = conv(widths['stem_conv'], 3, 1, 'stem_conv', self.dtype)(x)
    x = nn.relu(batch_norm(train, 'stem_bn', self.dtype)(x))
    low = x
    for stage in range(1, len(DEEPLAB_STAGES) + 1):
      for block in range(self.blocks):
        prefix = f'stage{stage}_block{block}'
        first = block == 0
        x = BasicBlock(
            widths=(widths[f'{prefix}/conv1'], widths[f'{prefix}/conv2']),
            stride=DEEPLAB_STRIDES[stage - 1] if first else 1,
            shortcut='projection' if first and self.has_projection(stage) else 'identity',
            dtype=self.dtype, dilation=DEEPLAB_DILATIONS[stage - 1], name=prefix)(x, train)
      if stage == 1:
        low = x
    layer = lambda x, name, kernel=1, dilation=1: conv_bn_relu(
        x, widths[name], kernel, name, train, self.dtype, dilation)
    branches = [layer(x, 'aspp_1x1')]
    branches += [layer(x, f'aspp_d{rate}', 3, rate) for rate in ASPP_RATES]
    x = layer(jnp.concatenate(branches, -1), 'aspp_proj')
    x = resize_bilinear(x, *low.shape[1:3])
    x = layer(jnp.concatenate([x, layer(low, 'low_proj')], -1), 'decoder_conv', 3)
    x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='head')(x)
    return resize_bilinear(x, height, width).astype(jnp.float32)
