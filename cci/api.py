"""CCI in anyone's training loop: the spec from a params tree and path patterns.

    spec = cci.spec_for(params, exclude=r'head', total_steps=10_000)
    tx = cci.sparsify(optax.sgd(0.1, 0.9), spec)
    logits = model.apply({'params': cci.forward_params(params, opt_state, spec)}, x)

`spec_for` decides the grouped kernels exactly as the project's own runs do
(`cci.select_kernels`: every conv and dense kernel whose c_in divides by g, filtered by
regexes on parameter paths such as 'block1/Conv_0/kernel') and, given `total_steps`,
places the schedule at METHODS.md's default fractions of training.
"""

from typing import Any

import jax
from flax import nnx

from cci.masks import select_kernels
from cci.sparsify import SparsitySpec

# METHODS.md section 4: the kept count reaches k at 30% of training; dynamic freezes
# the mask for the last 10%.
END_FRACTION = 0.3
FREEZE_FRACTION = 0.1


def spec_for(params: Any, include: str = '', exclude: str = '', *,
             method: str = 'dynamic', group_size: int = 8, keep: int = 2,
             total_steps: int | None = None, **options: Any) -> SparsitySpec:
  """The `SparsitySpec` of every groupable kernel of `params` that the patterns select.

  Args:
    params: the model's parameters (`variables['params']`, the tree the optimiser
      sees; for an NNX model `nnx.state(model, nnx.Param)`), arrays or
      `jax.ShapeDtypeStruct` leaves.
    include: a regex searched in each kernel's path; if set, only matching kernels are
      candidates, and a matching kernel that cannot be grouped is an error.
    exclude: a regex; matching kernels stay dense.
    method: 'oneshot', 'gradual' or 'dynamic'.
    group_size: g, consecutive input channels per group.
    keep: k, weights kept per group.
    total_steps: optimiser steps of the run; sets `begin_step` 0, `end_step` at 30%
      and `freeze_step` at 90% of them unless given in `options`.
    **options: any other `SparsitySpec` field (begin_step, end_step, freeze_step,
      update_every, refinement, granularity, pattern).

  Returns:
    The spec for `cci.sparsify` and `cci.forward_params`.

  Raises:
    ValueError: an included kernel cannot be grouped (names its path), no kernel can be
      grouped, `params` is a whole variables dict (or an NNX state holding more than
      `nnx.Param`s), or `dynamic` has no schedule.
  """
  if 'grouped' in options:
    raise ValueError('spec_for chooses the grouped kernels itself; use include/exclude.')
  if _is_variables(params):
    raise ValueError("spec_for takes the params tree (variables['params']), the tree "
                     'the optimiser sees, not the whole variables dict.')
  others = _non_params(params)
  if others:
    raise ValueError(f'spec_for takes the parameters only (nnx.state(model, nnx.Param)); '
                     f'this state also holds {others}.')
  schedule = {}
  if total_steps is not None:
    schedule = {'begin_step': 0, 'end_step': round(END_FRACTION * total_steps),
                'freeze_step': round((1.0 - FREEZE_FRACTION) * total_steps)}
  elif method == 'dynamic' and 'freeze_step' not in options:
    raise ValueError("method='dynamic' needs total_steps (or freeze_step): without it "
                     'the mask would be frozen from step 0.')
  decisions = select_kernels(params, group_size, keep, include, exclude)
  spec = SparsitySpec(grouped=tuple(d.path for d in decisions if d.grouped),
                      method=method, group_size=group_size, keep=keep,
                      **{**schedule, **options})
  if spec.method == 'dynamic' and spec.freeze_step < spec.end_step:
    raise ValueError(f'freeze_step={spec.freeze_step} comes before end_step='
                     f'{spec.end_step}: the mask would freeze before reaching keep.')
  return spec


def _is_variables(tree: Any) -> bool:
  """Whether `tree` looks like `model.init(...)`'s output rather than its params."""
  return hasattr(tree, 'keys') and 'params' in tree and all(
      hasattr(value, 'keys') for value in tree.values())


def _non_params(tree: Any) -> list[str]:
  """The types of the NNX variables in `tree` that are not `nnx.Param`s."""
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return sorted({type(leaf).__name__ for leaf in leaves
                 if isinstance(leaf, nnx.Variable) and not isinstance(leaf, nnx.Param)})
