"""Channel-importance criteria of the channel-pruning baselines (METHODS.md section 3).

Both baselines rank the channels of the same groups C2S2 selects and remove them with
the same surgery (`c2s2.surgery`):
  L1-norm filter pruning (Li et al. 2017): the L1 norm of each output filter of the
    group's producing kernels; the same fraction pruned in every group.
  Network slimming (Liu et al. 2017): |gamma| of the batch norm after the producer
    (trained with L1 on those scales first); one global threshold over all groups,
    never a group below `min_channels`.
All functions are pure numpy over a params tree and a `ChannelGroup`.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from c2s2.graph import ChannelGroup


def _layer(params: Mapping[str, Any], module: str) -> Mapping[str, Any]:
  for key in module.split('/'):
    params = params[key]
  return params


def filter_l1_norms(params: Mapping[str, Any], group: ChannelGroup) -> np.ndarray:
  """Sum over the group's producers of each unit's output filters' L1 norm, (size,)."""
  total = np.zeros(group.size, np.float64)
  for producer in group.producers:
    kernel = np.abs(np.asarray(_layer(params, producer)['kernel'], np.float64))
    if kernel.ndim == 3 and kernel.shape[-1] % (group.size * group.unit):
      kernel = kernel.reshape(kernel.shape[0], -1)  # DenseGeneral to (heads, head_dim)
    total += group.unit_sums(kernel.reshape(-1, kernel.shape[-1]).sum(axis=0))
  return total


def norm_scales(params: Mapping[str, Any], group: ChannelGroup) -> np.ndarray:
  """Sum over the group's sites of |scale| of their norm per unit, shape (size,).

  Raises:
    ValueError: a site has no norm scale (network slimming needs batch norm after
      every pruned conv; names the site).
  """
  total = np.zeros(group.size, np.float64)
  for site in group.sites:
    layer = _layer(params, site)
    if 'scale' not in layer or 'kernel' in layer:
      raise ValueError(f'Network slimming ranks channels by the norm scale after the '
                       f'producer, but group {group.name} has none at {site}.')
    total += group.unit_sums(np.abs(np.asarray(layer['scale'], np.float64)))
  return total


def _keep_largest(importance: np.ndarray, count: int) -> np.ndarray:
  """Bool mask of the `count` largest entries (ties: the lower index is kept)."""
  order = np.argsort(-importance, kind='stable')
  mask = np.zeros(importance.size, bool)
  mask[order[:count]] = True
  return mask


def uniform_masks(importance: Mapping[str, np.ndarray], fraction: float,
                  min_channels: int) -> dict[str, np.ndarray]:
  """Prune `floor(fraction * size)` least important channels of every group.

  Each group keeps at least `min_channels` (or all its channels if it has fewer).
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'Pruning fraction {fraction} must be in [0, 1].')
  masks = {}
  for name, values in importance.items():
    size = len(values)
    keep = max(size - int(np.floor(fraction * size + 1e-9)), min(min_channels, size))
    masks[name] = _keep_largest(np.asarray(values), keep)
  return masks


def global_threshold_masks(importance: Mapping[str, np.ndarray], fraction: float,
                           min_channels: int) -> dict[str, np.ndarray]:
  """Prune the `floor(fraction * total)` globally least important channels.

  Channels are pruned from the smallest importance up (ties: the earlier group, then
  the lower index, first); a channel whose group would fall below `min_channels`
  stays, so the count pruned may be smaller than asked.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'Pruning fraction {fraction} must be in [0, 1].')
  names = list(importance)
  entries = sorted((float(v), g, i) for g, name in enumerate(names)
                   for i, v in enumerate(importance[name]))
  total = len(entries)
  budget = int(np.floor(fraction * total + 1e-9))
  masks = {name: np.ones(len(importance[name]), bool) for name in names}
  kept = {name: len(importance[name]) for name in names}
  for _, g, i in entries:
    if budget == 0:
      break
    name = names[g]
    if kept[name] <= min_channels:
      continue
    masks[name][i] = False
    kept[name] -= 1
    budget -= 1
  return masks
