"""One-shot channel-pruning baselines: L1-norm filters and network slimming.

`config.channel_pruning.method`:
  l1_filter  Li et al. 2017: in every selected group, remove the same fraction of
             channels, those whose producing filters have the smallest L1 norm.
  slimming   Liu et al. 2017: remove the channels whose batch-norm |scale| is below
             one global threshold (at least `min_channels` per group). The model in
             `init_from` should come from a run with `optimizer.norm_scale_l1 > 0`.
Groups are chosen as for C2S2 (`include`, `exclude`, `prune_residual_stream`), the
fraction is `prune_fraction`, or the least one whose compact model reaches
`target_macs_ratio`; surgery is C2S2's (`c2s2.surgery`). `select` writes the compact variables to
`workdir/selection/` and returns the config of the compact model's fine-tune, which
the loop then trains like any run.
"""

import os
from typing import Any, Callable

import ml_collections
import numpy as np
from absl import logging

from c2s2 import criteria, selection, surgery
from train import checkpoints, data, model_setup
from train import workdir as workdir_lib

METHODS = ('l1_filter', 'slimming')
_BISECTIONS = 20


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the baseline's keys; raises ValueError naming the key."""
  cp = config.channel_pruning
  if not config.init_from:
    raise ValueError(f'config.channel_pruning.method={cp.method} prunes a pre-trained '
                     'model: set config.init_from to the workdir of a dense run.')
  if config.sparsity.method != 'none':
    raise ValueError('config.channel_pruning and config.sparsity cannot be combined.')
  if not 0.0 <= cp.prune_fraction <= 1.0:
    raise ValueError('config.channel_pruning.prune_fraction must be in [0, 1], got '
                     f'{cp.prune_fraction}.')
  for key in ('min_channels', 'channel_multiple'):
    if cp[key] < 1:
      raise ValueError(f'config.channel_pruning.{key} must be >= 1, got {cp[key]}.')


def importance_of(method: str, params: Any, graph, names: list[str]
                  ) -> dict[str, np.ndarray]:
  """Per group: the criterion's importance of each channel."""
  criterion = {'l1_filter': criteria.filter_l1_norms,
               'slimming': criteria.norm_scales}[method]
  return {name: criterion(params, graph.group(name)) for name in names}


def masks_at(method: str, importance: dict[str, np.ndarray], fraction: float,
             min_channels: int, channel_multiple: int) -> dict[str, np.ndarray]:
  """Kept-channel masks of each group at `fraction` (rounded up to the multiple)."""
  choose = {'l1_filter': criteria.uniform_masks,
            'slimming': criteria.global_threshold_masks}[method]
  masks = choose(importance, fraction, min_channels)
  return {n: selection.round_up(m, importance[n], channel_multiple) for n, m in masks.items()}


def least_fraction(macs_ratio_at: Callable[[float], float], target: float) -> float:
  """The least pruning fraction whose MACs ratio is at most `target` (bisection).

  Raises:
    ValueError: even pruning everything allowed stays above the target.
  """
  if macs_ratio_at(1.0) > target:
    raise ValueError(f'config.channel_pruning.target_macs_ratio={target} cannot be met: '
                     f'pruning every allowed channel leaves {macs_ratio_at(1.0):.3f}.')
  low, high = 0.0, 1.0
  if macs_ratio_at(low) <= target:
    return low
  for _ in range(_BISECTIONS):
    middle = (low + high) / 2
    low, high = (low, middle) if macs_ratio_at(middle) <= target else (middle, high)
  return high


def _compact(config: ml_collections.ConfigDict) -> tuple[dict, dict[str, Any]]:
  """The compact variables and the record of what was removed."""
  cp = config.channel_pruning
  dataset = data.load_dataset(config.data)
  widths = model_setup.config_widths(config, dataset.num_classes)
  model = model_setup.build_model(config, dataset.num_classes, widths)
  abstract = model_setup.abstract_variables(model, dataset.image_shape)
  graph = model_setup.trace_graph(model, dataset.image_shape, abstract)
  names = model_setup.candidate_groups(graph, cp)
  variables = checkpoints.load_variables(config.init_from, abstract)
  importance = importance_of(cp.method, variables['params'], graph, names)
  full = model_setup.model_macs(config, dataset.num_classes, widths, dataset.image_shape)

  def compact_widths(masks):
    out = dict(widths)
    for name, mask in masks.items():
      out = model_setup.with_width(out, graph.group(name), int(mask.sum()))
    return out

  def macs_ratio_at(fraction: float) -> float:
    masks = masks_at(cp.method, importance, fraction, cp.min_channels, cp.channel_multiple)
    return model_setup.model_macs(config, dataset.num_classes, compact_widths(masks),
                                  dataset.image_shape) / full

  fraction = cp.prune_fraction
  if cp.target_macs_ratio > 0:
    fraction = least_fraction(macs_ratio_at, cp.target_macs_ratio)
  masks = masks_at(cp.method, importance, fraction, cp.min_channels, cp.channel_multiple)
  compact = surgery.slice_variables(variables, surgery.plan(graph, masks, variables))
  record = {'method': cp.method, 'fraction': fraction, 'macs_ratio': macs_ratio_at(fraction),
            'widths': compact_widths(masks),
            'kept': {n: [int(m.sum()), int(m.size)] for n, m in masks.items()}}
  rows = '\n'.join(f'  {n:<32}{k:>5} of {s}' for n, (k, s) in record['kept'].items())
  logging.info('%s: fraction %.4f, MACs ratio %.4f; kept channels:\n%s', cp.method,
               fraction, record['macs_ratio'], rows)
  return compact, record


def select(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """Prunes `init_from` once (or reuses the pruned model already in the workdir).

  Returns:
    The fine-tune config: `init_from` is `workdir/selection`, `model.widths` the
    compact widths (also written to `workdir/widths.json`).
  """
  validate(config)
  ckpt = checkpoints.Checkpointer(
      os.path.join(workdir, workdir_lib.SELECTION_DIR, workdir_lib.CHECKPOINT_DIR), keep=1)
  try:
    if ckpt.latest_step() is None:
      compact, record = _compact(config)
      ckpt.save(0, compact, record)
      ckpt.wait()
    record = ckpt.meta(ckpt.latest_step())
  finally:
    ckpt.close()
  return model_setup.finetune_config(config, workdir, record['widths'])
