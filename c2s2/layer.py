"""The C2S2 pruning layer (METHODS.md 2.1) and its insertion into any linen model.

A pruning layer is a 1x1 depth-wise conv without bias: one real `scale` per channel,
initialised to 1. It is inserted after the batch norm of every prunable conv without
editing the model: `pruning_layers` intercepts the calls of the modules named as sites
and multiplies their outputs, so a dense checkpoint loads into the augmented model as is.
"""

import contextlib
from collections.abc import Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ('off', 'real', 'binary')


def prune_channels(x: jax.Array, scale: jax.Array, mode: str,
                   mask: jax.Array | None = None) -> jax.Array:
  """`x` with its last axis scaled: off `x`, real `x * scale`, binary `x * scale * mask`.

  In binary mode the mask is a constant: gradients reach the kept scales only.
  """
  if mode == 'off':
    return x
  scale = scale.astype(x.dtype)
  if mode == 'real':
    return x * scale
  if mode == 'binary':
    if mask is None:
      raise ValueError('PruningLayer: binary mode needs the channel mask.')
    return x * (scale * jax.lax.stop_gradient(mask).astype(x.dtype))
  raise ValueError(f'PruningLayer: mode {mode!r} is not one of {MODES}.')


class PruningLayer(nn.Module):
  """Per-channel `scale` (init 1) applied as `x * scale` in the mode chosen.

  Attributes:
    mode: 'off' (identity), 'real' (`x * scale`) or 'binary' (`x * scale * mask`).
  """
  mode: str = 'real'

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32)
    return prune_channels(x, scale, self.mode, mask)


@contextlib.contextmanager
def pruning_layers(scales: Mapping[str, jax.Array],
                   masks: Mapping[str, jax.Array] | None = None) -> Iterator[None]:
  """Within the context, the output of each site module passes a pruning layer.

  Args:
    scales: site module path ('stage1_block0/bn1') -> `scale` of its pruning layer.
      Sites that share one array share one pruning layer (a residual stream). A
      site with outputs (..., heads, head_dim) takes heads * head_dim entries.
      Modules not named here are untouched (mode 'off').
    masks: site path -> binary mask: those sites run in binary mode, the others
      in real mode.
  """
  masks = masks or {}

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != '__call__' or context.module.scope is None:
      return out  # An unbound module (built with parent=None) is never a site.
    path = '/'.join(context.module.path)
    if path not in scales:
      return out
    mode, width = 'binary' if path in masks else 'real', scales[path].shape[0]
    flat = out
    if out.shape[-1] != width and out.ndim > 1 and out.shape[-2] * out.shape[-1] == width:
      flat = out.reshape(*out.shape[:-2], width)  # (..., heads, head_dim) projections
    if flat.shape[-1] != width:
      raise ValueError(f'PruningLayer after {path}: {out.shape[-1]} channels but a '
                       f'scale of {width}.')
    return PruningLayer(mode=mode, parent=None).apply(
        {'params': {'scale': scales[path]}}, flat, masks.get(path)).reshape(out.shape)

  with nn.intercept_methods(intercept):
    yield
