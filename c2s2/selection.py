"""C2S2 channel selection as pure functions (METHODS.md 2.2).

Phase 1 trains the real scales with the L1 proximal step, so unimportant channels reach
exactly zero; `binarize` turns scales into the channel mask (at least `min_channels`
kept); the cost check compares held-out metrics with the pre-trained reference and
`decide` says what to do when the budget is exceeded.
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ON_OVER_BUDGET = ('restore', 'halve_lambda')
BUDGETS = ('cumulative', 'paced')


def soft_threshold(x: jax.Array, threshold: float | jax.Array) -> jax.Array:
  """The proximal operator of `threshold * |x|`: shrinks towards 0, exactly 0 inside."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)


def proximal_sgd_step(scale: jax.Array, grad: jax.Array, learning_rate: float,
                      strength: float) -> jax.Array:
  """One proximal-gradient step on `task_loss + strength * sum |scale|`."""
  return soft_threshold(scale - learning_rate * grad, learning_rate * strength)


def cost_weights(macs_per_channel: Mapping[str, float]) -> dict[str, float]:
  """Per-layer lambda multipliers proportional to MACs per channel, mean 1."""
  mean = float(np.mean(list(macs_per_channel.values())))
  return {name: float(macs) / mean for name, macs in macs_per_channel.items()}


def binarize(scale: np.ndarray, importance: np.ndarray, min_channels: int) -> np.ndarray:
  """Channel mask (bool) of a phase-1 scale: nonzero channels, at least `min_channels`.

  If fewer than `min_channels` scales are nonzero, the most important zeroed channels
  (largest accumulated phase-1 magnitude, ties to the lower index) are kept too.
  """
  mask = np.asarray(scale) != 0
  missing = min(min_channels, mask.size) - int(mask.sum())
  if missing > 0:
    mask = restore(mask, importance, missing)
  return mask


def restore_order(mask: np.ndarray, importance: np.ndarray) -> np.ndarray:
  """Pruned channel indices, most important first (ties to the lower index)."""
  pruned = np.flatnonzero(~np.asarray(mask, bool))
  order = np.argsort(-np.asarray(importance)[pruned], kind='stable')
  return pruned[order]


def restore(mask: np.ndarray, importance: np.ndarray, count: int) -> np.ndarray:
  """`mask` with its `count` most important pruned channels kept again."""
  mask = np.array(mask, bool)
  mask[restore_order(mask, importance)[:count]] = True
  return mask


def round_up(mask: np.ndarray, importance: np.ndarray, multiple: int) -> np.ndarray:
  """`mask` keeping a multiple of `multiple` channels (or all): the most important
  pruned channels are kept again. Hardware runs some widths faster (e.g. multiples of
  the vector width)."""
  mask = np.asarray(mask, bool)
  count = int(mask.sum())
  target = min(-(-count // multiple) * multiple, mask.size)
  return restore(mask, importance, target - count)


def within_budget(reference: Mapping[str, float], current: Mapping[str, float],
                  epsilon: float, metric: str = 'top1') -> bool:
  """Whether the held-out `metric` (higher is better: 'top1', or 'miou' for
  segmentation) dropped by at most `epsilon` (in its units) from the reference."""
  return reference[metric] - current[metric] <= epsilon + 1e-12


def unit_budget(epsilon: float, unit: int, num_units: int, budget: str) -> float:
  """The held-out drop allowed after unit `unit` (0-based) of `num_units`.

  'cumulative' (METHODS.md 2.2 as written): `epsilon` from the first unit on, so the
  first units may spend all of it. 'paced': `epsilon * (unit + 1) / num_units`, the
  budget spent evenly along the schedule, so every unit may prune its share.
  """
  if budget not in BUDGETS:
    raise ValueError(f'budget={budget!r}; choose one of {BUDGETS}.')
  if budget == 'cumulative':
    return epsilon
  return epsilon * min(unit + 1, num_units) / num_units


def land_on_target(masks: Mapping[str, np.ndarray], importance: Mapping[str, np.ndarray],
                   ratio_of: Callable[[dict[str, np.ndarray]], float], target: float,
                   tolerance: float, multiple: int) -> tuple[dict[str, np.ndarray], bool]:
  """Keeps pruned channels again so that the MACs ratio lands on `target`.

  Budget-aware binarisation: a unit whose zeros would take the model below its MACs
  target keeps, `multiple` at a time, the most important pruned channels of the layer
  that keeps the smallest fraction (ties to the first), until `ratio_of(masks)` (the
  model's MACs ratio with these masks) is at least `target`; if that last restore
  overshoots `target * (1 + tolerance)` while the masks before it were within
  `target * (1 - tolerance)`, those are kept instead.

  Returns:
    The masks and whether any channel was kept again.
  """
  given = {n: np.asarray(m, bool) for n, m in masks.items()}
  masks = dict(given)
  ratio, before = ratio_of(masks), None
  while ratio < target:
    open_layers = [n for n, m in masks.items() if not m.all()]
    if not open_layers:
      break
    name = min(open_layers, key=lambda n: masks[n].mean())
    before = (dict(masks), ratio)
    masks[name] = restore(masks[name], importance[name],
                          min(multiple, int((~masks[name]).sum())))
    ratio = ratio_of(masks)
  if before and ratio > target * (1 + tolerance) and before[1] >= target * (1 - tolerance):
    masks = before[0]
  return masks, any((masks[n] != given[n]).any() for n in masks)


def decide(within: bool, retry: int, max_retries: int, on_over_budget: str) -> str:
  """The cost check's action: 'accept', 'restore', 'halve_lambda' or 'give_up'.

  'restore' keeps half of the still-pruned channels again (most important first);
  'halve_lambda' redoes phase 1 with half the strength; after `max_retries` retries the
  layer keeps all its channels ('give_up').
  """
  if on_over_budget not in ON_OVER_BUDGET:
    raise ValueError(f'on_over_budget={on_over_budget!r}; choose one of {ON_OVER_BUDGET}.')
  if within:
    return 'accept'
  if retry >= max_retries:
    return 'give_up'
  return on_over_budget


def units(names: Sequence[str], per_unit: int) -> list[list[str]]:
  """The schedule: `names` (execution order) in consecutive units of `per_unit`."""
  return [list(names[i:i + per_unit]) for i in range(0, len(names), per_unit)]


def binarize_all(scales: Mapping[str, np.ndarray], importance: Mapping[str, np.ndarray],
                 min_channels: int, multiple: int) -> dict[str, np.ndarray]:
  """`binarize` each group's scale, then `round_up` to `multiple`."""
  masks = {}
  for name, scale in scales.items():
    weight = np.asarray(importance[name])
    masks[name] = round_up(binarize(np.asarray(scale), weight, min_channels), weight,
                           multiple)
  return masks


def restore_half(mask: np.ndarray, importance: np.ndarray, multiple: int) -> np.ndarray:
  """The cost check's 'restore': half of the pruned channels (rounded up, most
  important first) kept again, then `round_up` to `multiple`."""
  pruned = int((~np.asarray(mask, bool)).sum())
  return round_up(restore(mask, importance, -(-pruned // 2)), importance, multiple)


def scales_for_masks(scales: Mapping[str, jax.Array],
                     masks: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """The scales under fixed binary `masks`: pruned ones 0, kept ones whose scale is 0
  (restored channels) 1."""
  return {n: jnp.where(jnp.asarray(masks[n]) & (scales[n] == 0), 1.0, scales[n] * masks[n])
          for n in masks}
