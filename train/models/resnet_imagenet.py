"""ImageNet ResNets in torchvision's layout (He et al. 2016, v1.5).

A 7x7/2 stem conv with 64 channels and a 3x3/2 max pool, four stages of basic
(ResNet-18/34) or bottleneck (ResNet-50/101/152, expansion 4) blocks with 64,
128, 256 and 512 inner channels, the stride on the 3x3 conv, a 1x1 conv + BN
shortcut where the shape changes, global average pooling and a dense head.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from train.models.common import (BasicBlock, batch_norm, conv, resolve_widths,
                                 shortcut_branch)

STAGE_WIDTHS = (64, 128, 256, 512)
# depth -> (block kind, blocks per stage)
STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}
CONV_NAMES = {'basic': ('conv1', 'conv2'),
              'bottleneck': ('conv1', 'conv2', 'conv3')}


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand, each with BN, plus a shortcut."""
  widths: tuple[int, int, int]
  stride: int
  shortcut: str
  dtype: DTypeLike = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = conv(self.widths[0], 1, 1, 'conv1', self.dtype)(x)
    y = nn.relu(batch_norm(train, 'bn1', self.dtype)(y))
    y = conv(self.widths[1], 3, self.stride, 'conv2', self.dtype)(y)
    y = nn.relu(batch_norm(train, 'bn2', self.dtype)(y))
    y = conv(self.widths[2], 1, 1, 'conv3', self.dtype)(y)
    y = batch_norm(train, 'bn3', self.dtype, self.zero_init_residual)(y)
    residual = shortcut_branch(x, self.widths[2], self.stride, self.shortcut,
                               train, self.dtype)
    return nn.relu(y + residual)


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ImageNetResNet(nn.Module):
  """ResNet-18/34/50/101/152.

  Attributes:
    depth: One of the keys of ``STAGES``.
    num_classes: Outputs of the head.
    widths: Conv path -> output channels overriding some defaults, or None.
    dtype: Computation dtype; parameters stay float32, logits are float32.
    zero_init_residual: Start the last BN scale of every block at zero.
  """
  depth: int
  num_classes: int
  widths: Mapping[str, int] | None = None
  dtype: DTypeLike = jnp.float32
  zero_init_residual: bool = True

  def model_name(self) -> str:
    """The registry name, for error messages."""
    return f'resnet{self.depth}'

  def layout(self) -> tuple[str, tuple[int, ...]]:
    """Block kind and blocks per stage, after checking the depth."""
    if self.depth not in STAGES:
      raise ValueError(f'{self.model_name()}: an ImageNet ResNet needs depth '
                       f'in {sorted(STAGES)}')
    return STAGES[self.depth]

  def block_paths(self) -> list[tuple[int, int, str]]:
    """(stage from 1, block from 0, 'stage{S}_block{B}') of every block."""
    return [(stage, block, f'stage{stage}_block{block}')
            for stage, count in enumerate(self.layout()[1], start=1)
            for block in range(count)]

  def has_projection(self, stage: int, block: int) -> bool:
    """Whether a block changes the shape, so its shortcut is a 1x1 conv."""
    kind = self.layout()[0]
    return block == 0 and (stage > 1 or EXPANSION[kind] != 1)

  def default_widths(self) -> dict[str, int]:
    """Conv path -> output channels of the standard network."""
    kind = self.layout()[0]
    widths = {'stem_conv': STAGE_WIDTHS[0]}
    for stage, block, prefix in self.block_paths():
      inner = STAGE_WIDTHS[stage - 1]
      outer = inner * EXPANSION[kind]
      for name in CONV_NAMES[kind]:
        widths[f'{prefix}/{name}'] = inner
      widths[f'{prefix}/{CONV_NAMES[kind][-1]}'] = outer
      if self.has_projection(stage, block):
        widths[f'{prefix}/shortcut_conv'] = outer
    return widths

  def stream_groups(self) -> list[list[str]]:
    """Per stage, the conv paths whose outputs are summed in its stream."""
    last = CONV_NAMES[self.layout()[0]][-1]
    groups = [[] for _ in STAGE_WIDTHS]
    if not self.has_projection(1, 0):
      groups[0].append('stem_conv')
    for stage, block, prefix in self.block_paths():
      groups[stage - 1].append(f'{prefix}/{last}')
      if self.has_projection(stage, block):
        groups[stage - 1].append(f'{prefix}/shortcut_conv')
    return groups

  def resolved_widths(self) -> dict[str, int]:
    """The defaults with ``widths`` applied, validated."""
    return resolve_widths(self.model_name(), self.default_widths(),
                          self.widths, self.stream_groups())

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    widths = self.resolved_widths()
    kind = self.layout()[0]
    x = x.astype(self.dtype)
    x = conv(widths['stem_conv'], 7, 2, 'stem_conv', self.dtype)(x)
    x = nn.relu(batch_norm(train, 'stem_bn', self.dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for stage, block, prefix in self.block_paths():
      x = BLOCKS[kind](
          widths=tuple(widths[f'{prefix}/{name}'] for name in CONV_NAMES[kind]),
          stride=2 if stage > 1 and block == 0 else 1,
          shortcut='projection' if self.has_projection(stage, block)
          else 'identity',
          dtype=self.dtype, zero_init_residual=self.zero_init_residual,
          name=prefix)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
