"""VGG-16 with batch norm for CIFAR, as in network slimming (Liu et al. 2017).

Thirteen 3x3 convs, each followed by BN and ReLU, five 2x2 max pools, and a
single dense head on the flattened 512 features (1x1 spatial at 32x32 input).
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from train.models.common import batch_norm, conv, resolve_widths

# Conv output channels; 'M' is a 2x2 max pool.
CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
       512, 512, 512, 'M')
MODEL_NAME = 'vgg16'


def max_pool_2x2(x: jax.Array, layer: str) -> jax.Array:
  """2x2/2 max pool as reshape + max (XLA:CPU differentiates it faster than
  ``nn.max_pool``); ``layer`` names the preceding conv in errors."""
  batch, height, width, channels = x.shape
  if height % 2 or width % 2:
    raise ValueError(f'{MODEL_NAME}: the max pool after {layer} needs even '
                     f'height and width, got {height}x{width}')
  x = x.reshape(batch, height // 2, 2, width // 2, 2, channels)
  return x.max(axis=(2, 4))


class CifarVGG(nn.Module):
  """VGG-16 for CIFAR.

  Attributes:
    num_classes: Outputs of the head.
    widths: Conv path ('conv0'..'conv12') -> output channels overriding some
      defaults, or None.
    dtype: Computation dtype; parameters stay float32, logits are float32.
    conv_impl: 'auto', 'xla' or 'patches' (`common.PatchesConv`): 'auto' runs the
      2x2-position convs of the last block as patches + matmul on CPU.
  """
  num_classes: int
  widths: Mapping[str, int] | None = None
  dtype: DTypeLike = jnp.float32
  conv_impl: str = 'auto'

  def default_widths(self) -> dict[str, int]:
    """Conv path -> output channels of the standard network."""
    channels = [c for c in CFG if c != 'M']
    return {f'conv{i}': c for i, c in enumerate(channels)}

  def stream_groups(self) -> list[list[str]]:
    """No residual streams: every conv can take its own width."""
    return []

  def resolved_widths(self) -> dict[str, int]:
    """The defaults with ``widths`` applied, validated."""
    return resolve_widths(MODEL_NAME, self.default_widths(), self.widths, [])

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    widths = self.resolved_widths()
    x = x.astype(self.dtype)
    index = 0
    for item in CFG:
      if item == 'M':
        x = max_pool_2x2(x, f'conv{index - 1}')
        continue
      x = conv(widths[f'conv{index}'], 3, 1, f'conv{index}', self.dtype,
               self.conv_impl)(x)
      x = nn.relu(batch_norm(train, f'bn{index}', self.dtype)(x))
      index += 1
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
