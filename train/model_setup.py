"""Model building, widths, channel graphs, candidate groups and MACs from a config.

The setup that the experiment, C2S2's selection, the channel baselines and the reports
share; it imports no method.
"""

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from c2s2 import graph as graph_lib
from train import models
from train import workdir as workdir_lib
from train.models import stats

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def config_widths(config: ml_collections.ConfigDict, num_classes: int,
                  saved: dict[str, int] | None = None) -> dict[str, int]:
  """The model's default widths, then `saved` (e.g. a workdir's widths file), then the
  config's `model.widths`."""
  widths = models.default_widths(config.model.name, num_classes,
                                 shortcut=config.model.shortcut)
  widths.update(saved or {})
  widths.update(models.load_widths(config.model.widths))
  return widths


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                widths: dict[str, int]) -> Any:
  """The config's model (name, dtype, shortcut, conv implementation) at `widths`."""
  return models.build_model(config.model.name, num_classes, widths=widths,
                            dtype=DTYPES[config.model.dtype],
                            shortcut=config.model.shortcut,
                            conv_impl=config.model.conv_impl)


def init_variables(model: Any, image_shape: tuple[int, ...], seed: int) -> Any:
  return model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), model.dtype),
                    train=False)


def abstract_variables(model: Any, image_shape: tuple[int, ...]) -> Any:
  """Shapes and dtypes of the variables of `model` on images of `image_shape`."""
  return jax.eval_shape(lambda: init_variables(model, image_shape, 0))


def trace_graph(model: Any, image_shape: tuple[int, ...],
                variables: Any = None) -> graph_lib.ChannelGraph:
  """The channel graph of `model` (`variables`: its abstract variables, if at hand)."""
  if variables is None:
    variables = abstract_variables(model, image_shape)
  if hasattr(model, 'conv_impl'):  # Same parameters; the graph reads plain convs.
    model = model.clone(conv_impl='xla')
  return graph_lib.trace_channel_graph(
      lambda v, x: model.apply(v, x, train=False), variables,
      jnp.zeros((1, *image_shape), model.dtype))


def candidate_groups(graph: graph_lib.ChannelGraph, cp: Any,
                     where: str = 'config.channel_pruning') -> list[str]:
  """Names of the groups to select from, in execution order (METHODS.md 2.1 policy).

  Logs every group with the reason it is or is not selected. `cp` has the keys
  include, exclude and prune_residual_stream; `where` names them in errors.

  Raises:
    ValueError: `include` or `prune_residual_stream` asks for a group the graph cannot
      prune, or nothing is left to prune (names the keys and the group).
  """
  chosen, rows = [], []
  for group in graph.groups:
    if cp.include and not re.search(cp.include, group.name):
      why = 'not matched by include'
    elif cp.exclude and re.search(cp.exclude, group.name):
      why = 'excluded'
    elif group.joined and not cp.prune_residual_stream:
      why = 'residual stream (prune_residual_stream=False)'
    elif not group.prunable:
      if cp.include or group.joined:
        key = 'include' if cp.include else 'prune_residual_stream'
        raise ValueError(
            f'{where}.{key} selects {group.name}, whose channels cannot '
            f'be removed: {group.reason}. (A CIFAR ResNet with model.shortcut=A zero-pads '
            'its residual stream; use shortcut B.)')
      why = f'not prunable: {group.reason}'
    else:
      why = 'selected'
      chosen.append(group.name)
    rows.append(f'  {group.name:<32}{group.size:>6}  {why}')
  if jax.process_index() == 0:
    logging.info('Channel groups:\n%s', '\n'.join(rows))
  if not chosen:
    raise ValueError(f'{where} selects no prunable channel group (check '
                     f'include={cp.include!r}, exclude={cp.exclude!r}); prunable: '
                     f'{[g.name for g in graph.prunable()]}.')
  return chosen


def model_macs(config: ml_collections.ConfigDict, num_classes: int,
               widths: dict[str, int], image_shape: tuple[int, ...]) -> int:
  """MACs per example of the config's model at `widths`."""
  model = build_model(config, num_classes, widths)
  return stats.total_macs(stats.layer_stats(
      model, abstract_variables(model, image_shape), (1, *image_shape)))


def with_width(widths: dict[str, int], group: graph_lib.ChannelGroup,
               width: int) -> dict[str, int]:
  """`widths` with every producer of `group` at `width`."""
  return {**widths, **{p: width for p in group.producers if p in widths}}


def finetune_config(config: ml_collections.ConfigDict, workdir: str,
                    widths: dict[str, int]) -> ml_collections.ConfigDict:
  """The config that fine-tunes the compact model at `widths` from the variables a
  selection (C2S2's or a baseline's) saved in `workdir/selection`; writes
  `workdir/widths.json`."""
  if jax.process_index() == 0:
    models.save_widths(os.path.join(workdir, workdir_lib.WIDTHS_FILE), widths)
  finetune = ml_collections.ConfigDict(config.to_dict())
  finetune.init_from = os.path.join(workdir, workdir_lib.SELECTION_DIR)
  finetune.model.widths = json.dumps(widths)
  finetune.lock()
  return finetune
