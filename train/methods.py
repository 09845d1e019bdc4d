"""From config to method: what a pruning method changes in the optimiser and forward pass.

The steps stay method-agnostic: they train with `Method.tx`, compute the forward pass
on `Method.forward_params(params, opt_state)`, apply `Method.project` to the parameters
after each update and add `Method.metrics(params, opt_state)` to each step's metrics.
CCI's method is built here; C2S2's selection builds one per phase
(`train.c2s2_setup.selection_method`).
"""

import dataclasses
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import optax

import cci

ForwardParams = Callable[[Any, Any], Any]
StepMetrics = Callable[[Any, Any], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Method:
  """The optimiser, forward-pass weights and extra step metrics of a training method.

  `project`, if any, maps the parameters after each update (C2S2's phase 1: the L1
  proximal operator on the pruning-layer scales).
  """
  tx: optax.GradientTransformation
  forward_params: ForwardParams
  sparsity: cci.SparsitySpec | None = None
  metrics: StepMetrics | None = None
  project: Callable[[Any], Any] | None = None


def _identity(params: Any, opt_state: Any) -> Any:
  del opt_state
  return params


def cci_spec(cfg: ml_collections.ConfigDict, params: Any,
             total_steps: int) -> tuple[cci.SparsitySpec, list[cci.KernelDecision]]:
  """The CCI setup of `config.sparsity` for a model with parameters `params`."""
  decisions = cci.select_kernels(params, cfg.group_size, cfg.keep, cfg.include,
                                 cfg.exclude)
  for key in ('begin_fraction', 'end_fraction', 'freeze_fraction'):
    if not 0.0 <= cfg[key] <= 1.0:
      raise ValueError(f'config.sparsity.{key}={cfg[key]} must be in [0, 1].')
  if cfg.begin_fraction > cfg.end_fraction:
    raise ValueError('config.sparsity.begin_fraction must not exceed end_fraction '
                     f'({cfg.begin_fraction} > {cfg.end_fraction}).')
  spec = cci.SparsitySpec(
      grouped=tuple(d.path for d in decisions if d.grouped),
      method=cfg.method, group_size=cfg.group_size, keep=cfg.keep,
      granularity=cfg.granularity,
      begin_step=round(cfg.begin_fraction * total_steps),
      end_step=round(cfg.end_fraction * total_steps),
      update_every=cfg.update_every, refinement=cfg.refinement,
      freeze_step=round((1.0 - cfg.freeze_fraction) * total_steps),
      pattern=cfg.pattern)
  if spec.method == 'dynamic' and spec.freeze_step < spec.end_step:
    raise ValueError(
        'config.sparsity.freeze_fraction leaves the mask frozen before the kept count '
        f'reaches keep (freeze at step {spec.freeze_step} < end at {spec.end_step}).')
  return spec, decisions


def build(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
          params: Any, total_steps: int) -> Method:
  """The method of `config.sparsity.method` wrapped around the base optimiser `tx`."""
  if config.sparsity.method == 'none':
    return Method(tx, _identity)
  spec, decisions = cci_spec(config.sparsity, params, total_steps)
  if jax.process_index() == 0:
    logging.info('Sparsity %s, pattern %s, %d of %d, %s granularity:\n%s', spec.method,
                 spec.pattern, spec.keep, spec.group_size, spec.granularity,
                 cci.decisions_table(decisions))
  return Method(cci.sparsify(tx, spec),
                lambda p, s: cci.forward_params(p, s, spec), spec)
