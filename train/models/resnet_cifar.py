"""ResNets for CIFAR (He et al. 2016, Sec. 4.2): depth 6n+2, basic blocks.

A 3x3 stem conv with 16 channels, three stages of n basic blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 has stride 2), global
average pooling and a dense head. Shortcut option 'A' is parameter-free
(subsample and zero-pad the channels, as in the paper); option 'B' projects
with a 1x1 conv + BN where the shape changes.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from train.models.common import BasicBlock, batch_norm, conv, resolve_widths

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ('A', 'B')


def is_cifar_depth(depth: int) -> bool:
  """Whether ``depth`` has the form 6n+2 with n >= 1."""
  return depth >= 8 and (depth - 2) % 6 == 0


class CifarResNet(nn.Module):
  """CIFAR ResNet-{6n+2}.

  Attributes:
    depth: 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...).
    num_classes: Outputs of the head.
    widths: Conv path -> output channels overriding some defaults, or None.
    shortcut: 'A' (subsample + zero-pad) or 'B' (1x1 conv + BN projection).
    dtype: Computation dtype; parameters stay float32, logits are float32.
  """
  depth: int
  num_classes: int
  widths: Mapping[str, int] | None = None
  shortcut: str = 'A'
  dtype: DTypeLike = jnp.float32

  def model_name(self) -> str:
    """The registry name, for error messages."""
    return f'resnet{self.depth}'

  def blocks_per_stage(self) -> int:
    """n of depth 6n+2, after checking the depth and the shortcut option."""
    if not is_cifar_depth(self.depth):
      raise ValueError(f'{self.model_name()}: a CIFAR ResNet needs depth 6n+2 '
                       '>= 8 (8, 14, 20, 32, 44, 56, 110, ...)')
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'{self.model_name()}: shortcut must be one of '
                       f'{SHORTCUTS}, got {self.shortcut!r}')
    return (self.depth - 2) // 6

  def has_projection(self, stage: int, block: int) -> bool:
    """Whether block ``block`` of stage ``stage`` has a 1x1 conv shortcut."""
    return self.shortcut == 'B' and stage > 1 and block == 0

  def default_widths(self) -> dict[str, int]:
    """Conv path -> output channels of the standard network."""
    widths = {'stem_conv': STAGE_WIDTHS[0]}
    for stage, width in enumerate(STAGE_WIDTHS, start=1):
      for block in range(self.blocks_per_stage()):
        prefix = f'stage{stage}_block{block}'
        widths[f'{prefix}/conv1'] = width
        widths[f'{prefix}/conv2'] = width
        if self.has_projection(stage, block):
          widths[f'{prefix}/shortcut_conv'] = width
    return widths

  def stream_groups(self) -> list[list[str]]:
    """Per stage, the conv paths whose outputs are summed in its stream."""
    groups = []
    for stage in range(1, len(STAGE_WIDTHS) + 1):
      group = [f'stage{stage}_block{block}/conv2'
               for block in range(self.blocks_per_stage())]
      if stage == 1:
        group.insert(0, 'stem_conv')
      if self.has_projection(stage, 0):
        group.append(f'stage{stage}_block0/shortcut_conv')
      groups.append(group)
    return groups

  def resolved_widths(self) -> dict[str, int]:
    """The defaults with ``widths`` applied, validated."""
    groups = self.stream_groups()
    widths = resolve_widths(self.model_name(), self.default_widths(),
                            self.widths, groups)
    if self.shortcut == 'A':
      streams = [widths[group[0]] for group in groups]
      for stage in range(2, len(STAGE_WIDTHS) + 1):
        before, after = streams[stage - 2], streams[stage - 1]
        if after < before:
          raise ValueError(
              f'{self.model_name()}: stage{stage}_block0 zero-pads its '
              f'shortcut from {before} to {after} channels; shortcut A needs '
              f'the stage{stage} stream at least as wide as stage{stage - 1}')
    return widths

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    widths = self.resolved_widths()
    x = x.astype(self.dtype)
    x = conv(widths['stem_conv'], 3, 1, 'stem_conv', self.dtype)(x)
    x = nn.relu(batch_norm(train, 'stem_bn', self.dtype)(x))
    for stage in range(1, len(STAGE_WIDTHS) + 1):
      for block in range(self.blocks_per_stage()):
        prefix = f'stage{stage}_block{block}'
        if self.has_projection(stage, block):
          kind = 'projection'
        else:
          kind = 'zero_pad' if self.shortcut == 'A' else 'identity'
        x = BasicBlock(
            widths=(widths[f'{prefix}/conv1'], widths[f'{prefix}/conv2']),
            stride=2 if stage > 1 and block == 0 else 1, shortcut=kind,
            dtype=self.dtype, name=prefix)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
