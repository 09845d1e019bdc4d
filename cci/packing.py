"""The packed CCI format and a forward pass computed from it.

`values (..., c_in * k / g, c_out)` hold the kept weights of each group in order of
their position, `indices` (uint8) their position inside the group (METHODS.md 1.1).
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def pack(kernel: jax.Array, mask: jax.Array, group_size: int) -> tuple[jax.Array, jax.Array]:
  """Packs the kept weights of a CCI-masked kernel.

  Args:
    kernel: conv `(kh, kw, c_in, c_out)` or dense `(in, out)` weights.
    mask: a CCI mask of the kernel's shape (the same count kept in every group).
    group_size: g.

  Returns:
    `(values, indices)`, both shaped `(..., c_in * k / g, c_out)`.

  Raises:
    ValueError: the mask does not keep the same number in every group.
  """
  *lead, c_in, c_out = kernel.shape
  if c_in % group_size:
    raise ValueError(f'pack: c_in={c_in} is not divisible by group_size={group_size}.')
  grouped_mask = np.asarray(mask, bool).reshape(*lead, c_in // group_size, group_size, c_out)
  counts = grouped_mask.sum(-2)
  keep = int(counts.flat[0])
  if not np.all(counts == keep) or keep == 0:
    raise ValueError(f'pack: the mask keeps {counts.min()}..{counts.max()} weights per '
                     'group; a CCI mask keeps the same k >= 1 in every group.')
  # Kept positions first, in increasing order (a stable sort of "not kept").
  order = np.argsort(~grouped_mask, axis=-2, kind='stable')[..., :keep, :]
  grouped = jnp.asarray(kernel).reshape(grouped_mask.shape)
  values = jnp.take_along_axis(grouped, jnp.asarray(order), axis=-2)
  shape = (*lead, c_in // group_size * keep, c_out)
  return values.reshape(shape), jnp.asarray(order, jnp.uint8).reshape(shape)


def unpack(values: jax.Array, indices: jax.Array, group_size: int, keep: int) -> jax.Array:
  """Rebuilds the masked kernel from `pack`'s output: zeros where nothing was kept."""
  *lead, packed_in, c_out = values.shape
  groups = packed_in // keep
  v = values.reshape(*lead, groups, keep, 1, c_out)
  i = indices.reshape(*lead, groups, keep, 1, c_out).astype(jnp.int32)
  one_hot = i == jnp.arange(group_size)[:, None]  # (..., G, k, g, c_out)
  dense = jnp.sum(jnp.where(one_hot, v, 0), axis=-3)
  return dense.reshape(*lead, groups * group_size, c_out)


def _gather_inputs(x: jax.Array, indices: jax.Array, group_size: int, keep: int) -> jax.Array:
  """x (..., c_in) -> (..., c_in * k / g, c_out): the input each kept weight multiplies."""
  packed_in = indices.shape[0]
  base = (jnp.arange(packed_in) // keep * group_size)[:, None]
  channel = base + indices.astype(jnp.int32)  # (c_in * k / g, c_out)
  return jnp.take(x, channel, axis=-1)


def packed_dense(x: jax.Array, values: jax.Array, indices: jax.Array, group_size: int,
                 keep: int) -> jax.Array:
  """x @ W for a packed dense kernel: gather each kept input, multiply, sum."""
  return jnp.einsum('...ko,ko->...o', _gather_inputs(x, indices, group_size, keep), values)


def packed_conv(x: jax.Array, values: jax.Array, indices: jax.Array, group_size: int,
                keep: int, strides: tuple[int, int], padding: Any) -> jax.Array:
  """An NHWC conv from a packed kernel: per tap, gather the kept inputs and reduce."""
  kh, kw = values.shape[:2]
  pads = padding if not isinstance(padding, str) else jax.lax.padtype_to_pads(
      x.shape[1:3], (kh, kw), strides, padding)
  x = jnp.pad(x, ((0, 0), *[tuple(p) for p in pads], (0, 0)))
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + strides[0] * (out_h - 1) + 1:strides[0],
                 j:j + strides[1] * (out_w - 1) + 1:strides[1]]
      out = out + packed_dense(window, values[i, j], indices[i, j], group_size, keep)
  return out


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def packed_apply(model: nn.Module, variables: Any, packed: Mapping[str, tuple],
                 group_size: int, keep: int, *args, **kwargs) -> Any:
  """`model.apply` with every packed layer computed from its packed kernel.

  Args:
    model: any linen model.
    variables: its variables (the packed layers' kernels are not read).
    packed: layer path ('stage1_block0/conv1') -> `(values, indices)` from `pack`.
    group_size, keep: the CCI setting of the packed kernels.
    *args, **kwargs: the model's call arguments.
  """

  def intercept(next_fun, call_args, call_kwargs, context):
    module = context.module
    path = '/'.join(module.path)
    if context.method_name != '__call__' or path not in packed:
      return next_fun(*call_args, **call_kwargs)
    values, indices = packed[path]
    x = call_args[0]
    if isinstance(module, nn.Conv):
      dilation = _pair(module.kernel_dilation or 1)
      if module.feature_group_count != 1 or dilation != (1, 1):
        raise ValueError(f'packed_apply: {path} is grouped or dilated; not supported.')
      strides = _pair(module.strides or 1)
      y = packed_conv(x.astype(values.dtype), values, indices, group_size, keep, strides,
                      module.padding)
    elif isinstance(module, nn.Dense):
      y = packed_dense(x.astype(values.dtype), values, indices, group_size, keep)
    else:
      raise ValueError(f'packed_apply: {path} is a {type(module).__name__}, not a Conv '
                       'or Dense.')
    if module.use_bias:
      y = y + module.variables['params']['bias']
    return y.astype(module.dtype or x.dtype)

  with nn.intercept_methods(intercept):
    return model.apply(variables, *args, **kwargs)
