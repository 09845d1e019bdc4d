"""How training uses CCI masks: an optax wrapper that carries them in its state.

`sparsify(tx, spec)` wraps any optax optimiser; the masks, the step and the inner
state are one pytree in the optimiser state, so checkpoints, resume and sharding
carry them with no extra code. The forward pass uses `forward_params(params,
opt_state, spec)`. Two lines in any training loop:

    tx = cci.sparsify(tx, cci.SparsitySpec(...))
    logits = model.apply({'params': cci.forward_params(params, opt_state, spec)}, x)

Methods (METHODS.md 1.2):
  oneshot  the mask is computed once from the initial (pre-trained) weights and
           fixed; pruned weights stay exactly zero.
  gradual  the kept count falls from g to k along the cubic schedule between
           `begin_step` and `end_step`; the mask is recomputed every `update_every`
           steps and pruned weights are zeroed.
  dynamic  dense latent weights; the forward pass uses w * mask(w), with the mask
           recomputed every step; the gradient of `forward_params` passes straight
           through to every latent weight, plus the SR-STE refinement
           `refinement * (1 - m) * w`; from `freeze_step` on the mask is fixed and
           pruned weights are zero. The gradient must come from one call of
           `forward_params` whose grouped outputs the loss uses, and reach
           `tx.update` unscaled (divide a loss scale out first): `tx.update` adds
           no refinement of its own.

Patterns: `cci` (exactly k of every group of g) or `unstructured`, the baseline of
METHODS.md section 3: each chosen kernel keeps its largest |w| at density k/g
(falling along Zhu & Gupta's continuous cubic schedule for `gradual`), no grouping.
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cci import masks as masks_lib
from cci.schedules import cubic_density, kept_count

METHODS = ('oneshot', 'gradual', 'dynamic')
PATTERNS = ('cci', 'unstructured')


@dataclasses.dataclass(frozen=True)
class SparsitySpec:
  """A CCI training setup. Steps count optimiser updates from 0.

  Attributes:
    grouped: parameter paths ('stage1_block0/conv1/kernel') of grouped kernels.
    method: 'oneshot', 'gradual' or 'dynamic'.
    group_size: g.
    keep: k, weights kept per group at the end.
    granularity: 'tap' or 'kernel'.
    begin_step, end_step: the kept count anneals from g to k between them
      (gradual, dynamic).
    update_every: steps between mask updates (gradual).
    refinement: SR-STE weight on pruned latent weights (dynamic).
    freeze_step: from this step on the mask is fixed (dynamic).
    pattern: 'cci', or 'unstructured' (each kernel keeps density k/g by magnitude).
  """
  grouped: tuple[str, ...]
  method: str = 'dynamic'
  group_size: int = 8
  keep: int = 2
  granularity: str = 'tap'
  begin_step: int = 0
  end_step: int = 0
  update_every: int = 1
  refinement: float = 2e-4
  freeze_step: int = 0
  pattern: str = 'cci'

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'sparsity.method={self.method!r}; choose one of {METHODS}.')
    if self.pattern not in PATTERNS:
      raise ValueError(f'sparsity.pattern={self.pattern!r}; choose one of {PATTERNS}.')
    if self.granularity not in masks_lib.GRANULARITIES:
      raise ValueError(f'sparsity.granularity={self.granularity!r}; choose one of '
                       f'{masks_lib.GRANULARITIES}.')
    if not 1 <= self.keep < self.group_size:
      raise ValueError(f'sparsity.keep={self.keep} must be in 1..group_size-1 '
                       f'(sparsity.group_size={self.group_size}).')
    if self.update_every < 1:
      raise ValueError(f'sparsity.update_every={self.update_every} must be >= 1.')

  def keep_at(self, step: jax.Array) -> jax.Array:
    """Kept count per group at `step` (oneshot: always `keep`)."""
    if self.method == 'oneshot':
      return jnp.asarray(self.keep, jnp.int32)
    return kept_count(step, self.group_size, self.keep, self.begin_step, self.end_step)

  def density_at(self, step: jax.Array) -> jax.Array:
    """Kept fraction of each unstructured kernel at `step` (continuous cubic)."""
    final = self.keep / self.group_size
    if self.method == 'oneshot':
      return jnp.asarray(final, jnp.float32)
    return cubic_density(jnp.asarray(step, jnp.float32), self.begin_step, self.end_step,
                         final)


class SparsityState(NamedTuple):
  """Optimiser state of `sparsify`: the inner state, the masks and the step.

  `masks` mirrors the params: a bool array for each grouped kernel, a scalar True
  for every other leaf.
  """
  inner: optax.OptState
  masks: Any
  step: jax.Array


def _paths_tree(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: masks_lib.path_of(kp), params)


def compute_masks(params: Any, spec: SparsitySpec, step: jax.Array) -> Any:
  """Masks of every grouped kernel of `params` at `step` of the kept-count schedule."""
  grouped = frozenset(spec.grouped)
  if spec.pattern == 'unstructured':
    density = spec.density_at(step)
    mask_of = lambda w: masks_lib.magnitude_mask(w, density)
  else:
    keep = spec.keep_at(step)
    mask_of = lambda w: masks_lib.cci_mask(w, spec.group_size, keep, spec.granularity)
  return jax.tree.map(
      lambda path, w: mask_of(w) if path in grouped else jnp.ones((), jnp.bool_),
      _paths_tree(params), params)


def _frozen(spec: SparsitySpec, step: jax.Array) -> jax.Array:
  """True where pruned weights are exactly zero and the mask is fixed."""
  if spec.method == 'dynamic':
    return step >= spec.freeze_step
  return jnp.asarray(True)


def _mask_changes(spec: SparsitySpec, step: jax.Array) -> jax.Array:
  """Whether the mask is recomputed for `step` (after the update that reaches it)."""
  if spec.method == 'oneshot':
    return jnp.asarray(False)
  if spec.method == 'gradual':
    inside = (step >= spec.begin_step) & (step <= spec.end_step)
    on_schedule = (step - spec.begin_step) % spec.update_every == 0
    return inside & (on_schedule | (step == spec.end_step))  # The end reaches k.
  return step <= spec.freeze_step


def sparsify(tx: optax.GradientTransformation,
             spec: SparsitySpec) -> optax.GradientTransformation:
  """Wraps `tx` so that training keeps the CCI constraint of `spec`."""

  def init(params):
    step = jnp.zeros((), jnp.int32)
    masks = compute_masks(params, spec, step)
    return SparsityState(tx.init(params), masks, step)

  def _recomputed_masks(params, updates, masks, step):
    new_params = optax.apply_updates(params, updates)
    # gradual never revives a pruned weight (Zhu & Gupta): rank only the kept ones,
    # not momentum residue on pruned ones. dynamic lets any latent weight compete.
    ranked = new_params if spec.method == 'dynamic' else jax.tree.map(
        jnp.multiply, new_params, masks)
    return compute_masks(ranked, spec, step)

  def update(grads, state: SparsityState, params=None):
    if params is None:
      raise ValueError('cci.sparsify needs params in update().')
    updates, inner = tx.update(grads, state.inner, params)
    step = state.step + 1
    masks, change = state.masks, _mask_changes(spec, step)
    if spec.method == 'dynamic':
      # Recomputed on nearly every step: a `cond` would make XLA materialise the
      # updates as its operand (measured slower on the ResNet-50 step).
      masks = jax.tree.map(lambda f, m: jnp.where(change, f, m),
                           _recomputed_masks(params, updates, masks, step), masks)
    elif spec.method == 'gradual':  # Every `update_every` steps: skip the ranking.
      masks = jax.lax.cond(change, lambda: _recomputed_masks(params, updates, masks, step),
                           lambda: masks)
    # Once the mask holds, pruned weights become exactly zero (w + -w); every other
    # weight takes the inner update as it would without the wrapper.
    zero = _frozen(spec, step)
    updates = jax.tree.map(lambda u, w, m: jnp.where(zero & ~m, -w, u), updates, params,
                           masks)
    return updates, SparsityState(inner, masks, step)

  return optax.GradientTransformation(init, update)


def find_state(opt_state: Any) -> SparsityState:
  """The `SparsityState` inside an optimiser state (which may wrap it)."""
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, SparsityState))
           if isinstance(s, SparsityState)]
  if len(found) != 1:
    raise ValueError(f'Expected one cci.sparsify state in the optimiser state, '
                     f'found {len(found)}.')
  return found[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sparse_refined(weights: jax.Array, mask: jax.Array, frozen: jax.Array,
                    refinement: float) -> jax.Array:
  """`weights * mask` with the gradient of METHODS.md 1.2's `dynamic`.

  Until `frozen` the gradient passes straight through to every latent weight, plus
  SR-STE's `refinement * (1 - mask) * weights`; once frozen pruned weights get none.
  One pass forward and one backward over the weights.
  """
  return weights * mask


def _sparse_refined_fwd(weights, mask, frozen, refinement):
  return weights * mask, (weights, mask, frozen)


def _sparse_refined_bwd(refinement, residuals, cotangent):
  weights, mask, frozen = residuals
  refined = cotangent + (refinement * ~mask * weights).astype(cotangent.dtype)
  return jnp.where(frozen, cotangent * mask, refined), None, None


_sparse_refined.defvjp(_sparse_refined_fwd, _sparse_refined_bwd)


def forward_params(params: Any, opt_state: Any, spec: SparsitySpec) -> Any:
  """The weights the forward pass uses: w * mask.

  For `dynamic` their gradient is straight-through with SR-STE's refinement until the
  mask is frozen (`tx.update` then needs no gradient rewrite of its own).
  """
  state = find_state(opt_state)
  if spec.method != 'dynamic':
    return jax.tree.map(jnp.multiply, params, state.masks)
  frozen = _frozen(spec, state.step)
  # A scalar mask stands for an ungrouped leaf (always True).
  return jax.tree.map(
      lambda w, m: w if m.ndim == 0 else _sparse_refined(w, m, frozen, spec.refinement),
      params, state.masks)
