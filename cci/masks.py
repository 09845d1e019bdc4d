"""CCI masks: in every group of `g` consecutive input channels keep exactly `k` weights.

Kernels use Flax layouts, conv `(kh, kw, c_in, c_out)` and dense `(in, out)`; the
grouped axis is the input-channel axis, -2 for both (METHODS.md 1.1).
"""

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

GRANULARITIES = ('tap', 'kernel')


def check_grouping(shape: tuple[int, ...], group_size: int, keep: int,
                   name: str = 'kernel') -> None:
  """Raises ValueError unless a kernel of `shape` can keep `keep` of `group_size`."""
  if len(shape) not in (2, 4):
    raise ValueError(f'{name}: shape {shape} is neither a dense (in, out) nor a conv '
                     '(kh, kw, c_in, c_out) kernel.')
  if group_size < 2 or shape[-2] % group_size:
    raise ValueError(f'{name}: c_in={shape[-2]} is not divisible by '
                     f'group_size={group_size} (keep={keep}).')
  if not 1 <= keep < group_size:
    raise ValueError(f'{name}: keep={keep} must be in 1..group_size-1 '
                     f'(group_size={group_size}).')


def _grouped(x: jax.Array, group_size: int) -> jax.Array:
  """(..., c_in, c_out) -> (..., c_in // g, g, c_out)."""
  *lead, c_in, c_out = x.shape
  return x.reshape(*lead, c_in // group_size, group_size, c_out)


def scores(kernel: jax.Array, granularity: str) -> jax.Array:
  """Importance of each weight: |w| per tap, or the L2 norm of its kh x kw slice."""
  if granularity not in GRANULARITIES:
    raise ValueError(f'granularity={granularity!r}; choose one of {GRANULARITIES}.')
  magnitude = jnp.abs(kernel.astype(jnp.float32))
  if granularity == 'kernel' and kernel.ndim == 4:
    norms = jnp.sqrt(jnp.sum(magnitude**2, axis=(0, 1), keepdims=True))
    return jnp.broadcast_to(norms, kernel.shape)
  return magnitude


def group_rank(score: jax.Array, group_size: int) -> jax.Array:
  """Rank of each entry inside its group (0 = largest); ties go to the lower index.

  A pairwise comparison instead of a sort: for g = 8 it is several times faster than
  `lax.top_k` on CPU and gives the same mask.
  """
  s = _grouped(score, group_size)
  a, b = s[..., :, None, :], s[..., None, :, :]  # a: entry i, b: entry j.
  index = jnp.arange(group_size)
  lower = (index[None, :] < index[:, None])[:, :, None]  # j < i.
  beats = (b > a) | ((b == a) & lower)
  return jnp.sum(beats, axis=-2, dtype=jnp.int32).reshape(score.shape)


def cci_mask(kernel: jax.Array, group_size: int, keep: int | jax.Array,
             granularity: str = 'tap') -> jax.Array:
  """The CCI mask of `kernel`: its `keep` largest weights in every group, as bools.

  Args:
    kernel: a conv `(kh, kw, c_in, c_out)` or dense `(in, out)` kernel.
    group_size: `g`, consecutive input channels per group.
    keep: `k`, weights kept per group, 1 <= k < g (may be traced under jit; a traced
      `keep` may also equal `g`, which keeps everything).
    granularity: 'tap' (every kernel position chooses) or 'kernel' (the kh x kw
      slice of an input channel is kept or dropped together, by its L2 norm).

  Returns:
    A bool array of the kernel's shape with exactly `keep` True per group.
  """
  if isinstance(keep, (int, np.integer)):
    check_grouping(kernel.shape, group_size, int(keep))
  else:
    check_grouping(kernel.shape, group_size, 1)
  return group_rank(scores(kernel, granularity), group_size) < keep


def magnitude_mask(kernel: jax.Array, density: float | jax.Array) -> jax.Array:
  """Unstructured: the kernel's `round(density * size)` largest |w|, as bools.

  The comparison pattern of METHODS.md section 3 (Zhu & Gupta): no grouping, any
  weight may survive. Ties go to the lower flat index; `density` may be traced.
  """
  flat = jnp.abs(kernel.astype(jnp.float32)).reshape(-1)
  keep = jnp.round(density * flat.size).astype(jnp.int32)
  order = jnp.argsort(-flat, stable=True)
  rank = jnp.zeros(flat.size, jnp.int32).at[order].set(jnp.arange(flat.size))
  return (rank < keep).reshape(kernel.shape)


def kept_per_group(mask: jax.Array, group_size: int) -> jax.Array:
  """Number of True entries in each group, shape (..., c_in // g, c_out)."""
  return jnp.sum(_grouped(mask, group_size), axis=-2)


# ---------------------------------------------------------------- kernel selection


@dataclasses.dataclass(frozen=True)
class KernelDecision:
  """Whether a parameter is CCI-grouped, and why (one row of the run's layer table)."""
  path: str
  shape: tuple[int, ...]
  grouped: bool
  reason: str


def path_of(key_path: tuple[Any, ...]) -> str:
  """'stage1_block0/conv1/kernel' from a `jax.tree_util` key path.

  The array of a Flax NNX variable (`nnx.State` from `nnx.split`) sits under the
  variable's `.value` attribute; the path is the variable's ('conv1/kernel').
  """
  if key_path and isinstance(key_path[-1], jax.tree_util.GetAttrKey) and (
      key_path[-1].name == 'value'):
    key_path = key_path[:-1]
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in key_path)


def select_kernels(params: Any, group_size: int, keep: int, include: str = '',
                   exclude: str = '') -> list[KernelDecision]:
  """Decides, for every parameter, whether it is grouped.

  Every conv and dense kernel whose c_in is divisible by `group_size` is grouped
  unless `exclude` (a regular expression searched in its path) matches it. With
  `include` set, only kernels it matches are candidates, and a matched kernel that
  cannot be grouped is an error rather than a dense layer.

  Raises:
    ValueError: `group_size`/`keep` are impossible, or an included kernel cannot be
      grouped (the message names the layer).
  """
  if not 1 <= keep < group_size:
    raise ValueError(f'sparsity.keep={keep} must be in 1..group_size-1 '
                     f'(sparsity.group_size={group_size}).')
  decisions = []
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
    path, shape = path_of(key_path), tuple(leaf.shape)
    decisions.append(KernelDecision(path, shape, *_decide(
        path, shape, group_size, keep, include, exclude)))
  if not any(d.grouped for d in decisions):
    raise ValueError(f'No kernel can be grouped with group_size={group_size} '
                     f'(include={include!r}, exclude={exclude!r}).')
  return decisions


def _decide(path: str, shape: tuple[int, ...], group_size: int, keep: int,
            include: str, exclude: str) -> tuple[bool, str]:
  if not path.endswith('kernel') or len(shape) not in (2, 4):
    return False, 'not a conv or dense kernel'
  if exclude and re.search(exclude, path):
    return False, f'excluded by sparsity.exclude={exclude!r}'
  if include and not re.search(include, path):
    return False, f'not matched by sparsity.include={include!r}'
  if shape[-2] % group_size:
    if include:
      check_grouping(shape, group_size, keep, name=path)
    kind = 'depth-wise, ' if shape[-2] == 1 else ''
    return False, f'{kind}c_in={shape[-2]} not divisible by group_size={group_size}'
  return True, f'{keep} of {group_size}'


def decisions_table(decisions: list[KernelDecision]) -> str:
  """A fixed-width table: one line per kernel, grouped or dense, and why."""
  rows = [d for d in decisions if d.reason != 'not a conv or dense kernel']
  width = max(len(d.path) for d in rows)
  lines = [f'{"kernel":<{width}}  {"shape":<18} {"CCI":<7} reason']
  for d in rows:
    lines.append(f'{d.path:<{width}}  {str(d.shape):<18} '
                 f'{"grouped" if d.grouped else "dense":<7} {d.reason}')
  return '\n'.join(lines)
