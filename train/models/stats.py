"""Per-layer shapes, parameters and MACs of any linen model, without FLOPs.

Every ``nn.Conv``, ``nn.ConvTranspose`` and ``nn.Dense`` call is intercepted while the model is
traced under ``jax.eval_shape``. A layer's path is its module path joined by
'/', the same string as its kernel's parameter path minus '/kernel'.
"""

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LayerStat:
  """One conv or dense call; shapes include the batch axis, MACs do not."""
  path: str
  kind: str  # 'conv', 'conv_transpose' or 'dense'
  kernel_shape: tuple[int, ...]
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  feature_group_count: int
  macs: int  # per example
  params: int  # kernel and bias of this layer


def _layer_stat(module: nn.Module, input_shape: tuple[int, ...],
                output_shape: tuple[int, ...]) -> LayerStat:
  """The statistics of a bound conv or dense module after its call."""
  params = module.variables['params']
  kernel_shape = tuple(params['kernel'].shape)
  is_conv = isinstance(module, nn.Conv)
  transposed = isinstance(module, nn.ConvTranspose)
  # Each output position costs one MAC per kernel weight (kh*kw*c_in/groups
  # per output channel); the positions are the axes between batch and features.
  # A transposed conv spreads each input position over the whole kernel instead.
  positions = (input_shape if transposed else output_shape)[1:-1]
  macs = math.prod(kernel_shape) * math.prod(positions)
  kind = 'conv' if is_conv else 'conv_transpose' if transposed else 'dense'
  return LayerStat(
      path='/'.join(module.path), kind=kind,
      kernel_shape=kernel_shape, input_shape=tuple(input_shape),
      output_shape=tuple(output_shape),
      feature_group_count=module.feature_group_count if is_conv else 1,
      macs=macs, params=count_params(params))


def layer_stats(model: nn.Module, variables: Any,
                input_shape: tuple[int, ...],
                call_kwargs: Mapping[str, Any] | None = None
                ) -> list[LayerStat]:
  """Statistics of every conv, transposed conv and dense call of ``model``, in order.

  Args:
    model: Any linen module.
    variables: Its variables; arrays or ``jax.ShapeDtypeStruct`` leaves.
    input_shape: Input shape including a leading batch axis, e.g.
      (1, 32, 32, 3); the input is float32.
    call_kwargs: Keyword arguments of the call; default ``{'train': False}``.

  Returns:
    One ``LayerStat`` per call (a module called twice appears twice).
  """
  kwargs = {'train': False} if call_kwargs is None else dict(call_kwargs)
  stats = []

  def record(next_fun, args, call_kw, context):
    out = next_fun(*args, **call_kw)
    if (context.method_name == '__call__'
        and isinstance(context.module, (nn.Conv, nn.ConvTranspose, nn.Dense))):
      stats.append(_layer_stat(context.module, args[0].shape, out.shape))
    return out

  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.apply, **kwargs), variables, x)
  return stats


def count_params(params: Any) -> int:
  """Number of scalars in all leaves of a pytree (arrays or shape structs)."""
  return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params))


def total_macs(stats: list[LayerStat],
               kernel_masks: Mapping[str, Any] | None = None) -> int:
  """Sum of per-example MACs, counting only kept weights of masked layers.

  Args:
    stats: From ``layer_stats``.
    kernel_masks: Layer path -> 0/1 array of the kernel's shape; a masked
      layer's MACs scale by its fraction of nonzeros.

  Returns:
    MACs per example.

  Raises:
    ValueError: If a mask names no layer or has the wrong shape.
  """
  masks = dict(kernel_masks or {})
  unknown = sorted(set(masks) - {stat.path for stat in stats})
  if unknown:
    raise ValueError(f'kernel_masks keys {unknown} name no conv or dense layer')
  total = 0
  for stat in stats:
    if stat.path not in masks:
      total += stat.macs
      continue
    mask = np.asarray(masks[stat.path])
    if mask.shape != stat.kernel_shape:
      raise ValueError(f'mask of {stat.path!r} has shape {mask.shape}, its '
                       f'kernel {stat.kernel_shape}')
    # macs is a multiple of mask.size, so this is exact.
    total += stat.macs * int(np.count_nonzero(mask)) // mask.size
  return total
