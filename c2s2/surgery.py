"""Channel surgery: physically remove pruned channels (METHODS.md 2.2 step 5).

A channel graph (`c2s2.graph`) lists, for every channel group, each array axis coupled
to its channels: producer kernels and biases, norm vectors and statistics, consumer
kernels (with concatenation offsets and flatten periods). Surgery folds the pruning
layer's kept `scale` into the sites (batch norm, or the conv where there is none), then
slices every coupled axis of the variables and of any params-shaped tree (the optimiser
state) by the same indices.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from c2s2.graph import ChannelGraph, ChannelGroup

# (collection, key path) -> {axis: kept indices}
Plan = dict[tuple[str, tuple[str, ...]], dict[int, np.ndarray]]


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _replace(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict:
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else _replace(tree[path[0]], path[1:], value)
  return out


def fold_scale(params: Mapping[str, Any], group: ChannelGroup, scale: jax.Array) -> dict:
  """`params` with the pruning layer of `group` folded into each of its sites.

  A norm site gets `scale *= s` and `bias *= s`; a conv or dense site (no norm) gets
  its kernel's output axis and bias multiplied. `scale` has one entry per unit of the
  group (`ChannelGroup.expand` spreads it over each site's channels).

  Raises:
    ValueError: a site without a scale or kernel to fold into (names it).
  """
  params = dict(params)
  widths = group.site_widths or (None,) * len(group.sites)
  for site, width in zip(group.sites, widths, strict=True):
    path = tuple(site.split('/'))
    layer = dict(_leaf(params, path))
    if not {'scale', 'kernel'} & set(layer):
      raise ValueError(f'Cannot fold the pruning layer of {group.name} into {site}: it '
                       f'has neither a scale nor a kernel (params {sorted(layer)}).')
    for key in ('scale', 'kernel', 'bias') if 'scale' in layer else ('kernel', 'bias'):
      if key in layer:
        layer[key] = _times_channels(layer[key], group, scale, width)
    params = _replace(params, path, layer)
  return params


def _times_channels(array: jax.Array, group: ChannelGroup, scale: jax.Array,
                    width: int | None) -> jax.Array:
  """`array` times the per-unit `scale` along its output channels: its last axis, or
  its last two (heads, head_dim) where they hold the site's `width` channels."""
  shape = array.shape
  if width and shape[-1] != width and len(shape) > 1 and shape[-2] * shape[-1] == width:
    flat = array.reshape(*shape[:-2], width)
    return (flat * group.expand(scale, width).astype(array.dtype)).reshape(shape)
  return array * group.expand(scale, shape[-1]).astype(array.dtype)


def fold_scales(params: Mapping[str, Any], graph: ChannelGraph,
                scales: Mapping[str, jax.Array],
                masks: Mapping[str, jax.Array] | None = None) -> dict:
  """`params` with the pruning layer of each group in `scales` folded into its sites.

  The same function of the parameters and scales as running the model inside
  `pruning_layers` (real mode, binary where `masks` names the group: the mask a
  constant), since `(gamma * x_hat + beta) * s = (gamma * s) * x_hat + beta * s` and
  likewise for a conv's kernel and bias. Computed on parameters, it costs no pass over
  the activations: the training step of choice where every site folds. It assumes each
  site's output is linear in its `scale`/`kernel` and `bias`, as for flax's norms, Conv
  and Dense; a custom norm computing `x * (1 + scale)` does not fold this way (run it
  inside `pruning_layers` instead).

  Args:
    params: the model's parameters.
    graph: its channel graph.
    scales: group name -> scale of its pruning layer.
    masks: group name -> float or bool mask of the groups in binary mode.

  Raises:
    ValueError: a site with neither a scale nor a kernel (names it, as `fold_scale`).
  """
  masks = masks or {}
  for name, scale in scales.items():
    if name in masks:
      scale = scale * jax.lax.stop_gradient(jnp.asarray(masks[name], scale.dtype))
    params = fold_scale(params, graph.group(name), scale)
  return params


def foldable(params: Mapping[str, Any], group: ChannelGroup) -> bool:
  """Whether every site of `group` holds a scale or a kernel to fold into."""
  def holds(site: str) -> bool:
    try:
      return bool({'scale', 'kernel'} & set(_leaf(params, tuple(site.split('/')))))
    except KeyError:  # A norm without parameters (use_scale=use_bias=False).
      return False

  return all(holds(site) for site in group.sites)


def plan(graph: ChannelGraph, masks: Mapping[str, np.ndarray], variables: Any) -> Plan:
  """Kept indices of every array axis that loses channels.

  Args:
    graph: the model's channel graph.
    masks: group name -> bool mask of its units (True = kept): channels, or positions
      in every conv group, or attention heads (`ChannelGroup`).
    variables: the model's variables (arrays or shape structs), for axis sizes.

  Raises:
    ValueError: a mask for an unknown or unprunable group, of the wrong size, or
      keeping no channel.
  """
  removed: dict[tuple[str, tuple[str, ...], int], set[int]] = {}
  for name, mask in masks.items():
    group = graph.group(name)
    mask = np.asarray(mask, bool)
    if mask.shape != (group.size,):
      raise ValueError(f'{name}: mask of shape {mask.shape} for {group.size} units (one '
                       'per channel, conv-group position or attention head).')
    if mask.all():
      continue
    if not group.prunable:
      raise ValueError(f'{name} cannot lose channels: {group.reason}.')
    if not mask.any():
      raise ValueError(f'{name}: a mask keeping no channel would cut the network.')
    pruned = np.flatnonzero(~mask)
    for c in group.couplings:
      size = _leaf(variables[c.collection], c.path).shape[c.axis]
      removed.setdefault((c.collection, c.path, c.axis), set()).update(
          c.indices(pruned, size).tolist())
  result: Plan = {}
  for (collection, path, axis), indices in removed.items():
    size = _leaf(variables[collection], path).shape[axis]
    kept = np.setdiff1d(np.arange(size), np.fromiter(indices, int, len(indices)))
    result.setdefault((collection, path), {})[axis] = kept
  return result


def _take(x: Any, axes: Mapping[int, np.ndarray]) -> Any:
  for axis, kept in axes.items():
    x = jnp.take(x, jnp.asarray(kept), axis=axis)
  return x


def slice_variables(variables: Mapping[str, Any], removal: Plan) -> dict[str, Any]:
  """The variables (collections of nested dicts) with every planned axis sliced."""
  out = {k: v for k, v in variables.items()}
  for (collection, path), axes in removal.items():
    out[collection] = _replace(out[collection], path,
                               _take(_leaf(out[collection], path), axes))
  return out


def _dict_keys(path: tuple[Any, ...]) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def slice_params_like(tree: Any, params: Any, removal: Plan) -> Any:
  """Slices the params-shaped leaves of `tree` (an optimiser state) as the params.

  A leaf is params-shaped if its dict-key path ends with a planned parameter's path
  and it has that parameter's shape (e.g. a momentum trace); other leaves (counts,
  scalars) are kept.
  """
  planned = {path: (axes, _leaf(params, path).shape)
             for (collection, path), axes in removal.items() if collection == 'params'}

  def visit(path, leaf):
    keys = _dict_keys(path)
    for start in range(len(keys)):
      entry = planned.get(keys[start:])
      if entry and tuple(jnp.shape(leaf)) == tuple(entry[1]):
        return _take(leaf, entry[0])
    return leaf

  return jax.tree_util.tree_map_with_path(visit, tree)
