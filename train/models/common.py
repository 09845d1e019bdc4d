"""Pieces shared by the model files: layer factories, residual blocks, widths.

Every conv is named by its module path ('stage1_block0/conv1'); a model's
``widths`` maps such paths to output channels and may override only some of
them. Convs whose outputs are added in one residual stream form a *stream
group* and must share a width.
"""

import difflib
import functools
import numbers
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(features: int, kernel: int, stride: int, name: str,
         dtype: DTypeLike, impl: str = 'xla', dilation: int = 1) -> nn.Conv:
  """A bias-free square conv padded by dilation * (kernel // 2) on each side (as torch).

  `impl` other than 'xla' gives a `PatchesConv` (same parameters; no dilation).
  """
  pad = dilation * (kernel // 2)
  return (nn.Conv if impl == 'xla' else functools.partial(PatchesConv, impl=impl))(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
      use_bias=False, kernel_init=KAIMING_NORMAL, dtype=dtype, name=name)


CONV_IMPLS = ('auto', 'xla', 'patches')
# XLA:CPU runs a 3x3 conv whose output has 2x2 positions ~27x slower than the same
# conv as patches + matmul (VGG-16's last block at batch 128, measured on this
# project's 2-core machines; at 4x4 and above the plain conv is 3-10x faster).
PATCHES_MAX_POSITIONS = 4


def use_patches(impl: str, positions: int) -> bool:
  """Whether a conv with `positions` output positions runs as patches + matmul."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'model.conv_impl={impl!r}; choose one of {CONV_IMPLS}.')
  if impl == 'auto':
    return jax.default_backend() == 'cpu' and positions <= PATCHES_MAX_POSITIONS
  return impl == 'patches'


class PatchesConv(nn.Conv):
  """nn.Conv (same parameters) that may run as patches + matmul instead.

  `impl` 'xla' runs what nn.Conv runs; 'patches' gathers the kh x kw x c_in patches and
  multiplies them by the flattened kernel (the same numbers, to float rounding);
  'auto' takes patches where `use_patches` says it pays. For bias-free, ungrouped
  convs with explicit padding, as this project's models build them.
  """
  impl: str = 'auto'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    (top, bottom), (left, right) = self.padding
    sh, sw = self.strides
    positions = (((inputs.shape[1] + top + bottom - kh) // sh + 1)
                 * ((inputs.shape[2] + left + right - kw) // sw + 1))
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, inputs.shape[-1], self.features), self.param_dtype)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    numbers = ('NHWC', 'HWIO', 'NHWC')
    if not use_patches(self.impl, positions):  # What nn.Conv runs.
      return jax.lax.conv_general_dilated(inputs, kernel, (sh, sw), self.padding,
                                          dimension_numbers=numbers)
    patches = jax.lax.conv_general_dilated_patches(  # Features ordered (c_in, kh, kw).
        inputs, (kh, kw), (sh, sw), self.padding, dimension_numbers=numbers)
    return patches @ kernel.transpose(2, 0, 1, 3).reshape(-1, self.features)


def batch_norm(train: bool, name: str, dtype: DTypeLike,
               zero_scale: bool = False) -> nn.BatchNorm:
  """BatchNorm with torch's defaults; ``zero_scale`` starts the scale at 0."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, scale_init=scale_init,
                      name=name)


def shortcut_branch(x: jax.Array, features: int, stride: int, kind: str,
                    train: bool, dtype: DTypeLike) -> jax.Array:
  """The residual branch of a block.

  Args:
    x: Block input, NHWC.
    features: Output channels of the block.
    stride: Spatial stride of the block.
    kind: 'identity'; 'zero_pad' (subsample ``x[:, ::s, ::s]`` and zero-pad
      the channels evenly on both sides, He et al. option A); 'projection'
      (1x1 conv ``shortcut_conv`` + ``shortcut_bn``).
    train: Whether BatchNorm uses batch statistics.
    dtype: Computation dtype.

  Returns:
    The branch output, shaped like the block's main path.
  """
  if kind == 'projection':
    x = conv(features, 1, stride, 'shortcut_conv', dtype)(x)
    return batch_norm(train, 'shortcut_bn', dtype)(x)
  if kind == 'zero_pad':
    x = x[:, ::stride, ::stride]
    extra = features - x.shape[-1]
    channels = (extra // 2, extra - extra // 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), channels))
  return x


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN and ReLU plus a shortcut (He et al. 2016)."""
  widths: tuple[int, int]
  stride: int
  shortcut: str
  dtype: DTypeLike = jnp.float32
  zero_init_residual: bool = False
  dilation: int = 1  # Of both convs (dilated stages of segmentation backbones).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = conv(self.widths[0], 3, self.stride, 'conv1', self.dtype,
             dilation=self.dilation)(x)
    y = nn.relu(batch_norm(train, 'bn1', self.dtype)(y))
    y = conv(self.widths[1], 3, 1, 'conv2', self.dtype, dilation=self.dilation)(y)
    y = batch_norm(train, 'bn2', self.dtype, self.zero_init_residual)(y)
    residual = shortcut_branch(x, self.widths[1], self.stride, self.shortcut,
                               train, self.dtype)
    return nn.relu(y + residual)


def check_width(model: str, key: str, value: object) -> int:
  """Returns ``value`` as an int, or raises if it is not an integer >= 1."""
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise ValueError(f'{model}: width of {key!r} must be an integer, '
                     f'got {value!r}')
  if value < 1:
    raise ValueError(f'{model}: width of {key!r} must be >= 1, got {value}')
  return int(value)


def _some_keys(key: str, keys: Sequence[str], count: int = 5) -> str:
  """A few of ``keys``, the ones most similar to ``key`` first."""
  close = difflib.get_close_matches(key, keys, n=count, cutoff=0.5)
  rest = [k for k in keys if k not in close]
  return ', '.join(repr(k) for k in (close + rest)[:count]) + ', ...'


def resolve_widths(model: str, defaults: Mapping[str, int],
                   overrides: Mapping[str, int] | None,
                   groups: Sequence[Sequence[str]]) -> dict[str, int]:
  """Merges partial ``overrides`` into ``defaults`` and validates the result.

  Args:
    model: Model name for error messages, e.g. 'resnet20'.
    defaults: Conv path -> default output channels.
    overrides: Conv path -> output channels, or None.
    groups: Stream groups: conv paths whose widths must be equal.

  Returns:
    Conv path -> output channels for every conv.

  Raises:
    ValueError: If a key names no conv, a width is not an integer >= 1, or
      the widths within a stream group differ.
  """
  widths = dict(defaults)
  for key, value in (overrides or {}).items():
    if key not in defaults:
      raise ValueError(f'{model}: widths key {key!r} names no conv; valid '
                       f'keys include {_some_keys(key, list(defaults))}')
    widths[key] = check_width(model, key, value)
  for group in groups:
    first = group[0]
    for key in group[1:]:
      if widths[key] != widths[first]:
        raise ValueError(
            f'{model}: {first!r} (width {widths[first]}) and {key!r} (width '
            f'{widths[key]}) are summed in one residual stream and need the '
            f'same width; override all {len(group)} keys of this stream '
            'group together (see stream_groups)')
  return widths
