"""How training uses CCI masks: an optax wrapper that carries them in its state.

`sparsify(tx, spec)` wraps any optax optimiser; the masks, the step and the inner
state are one pytree in the optimiser state, so checkpoints, resume and sharding
carry them with no extra code. The forward pass uses `forward_params(params,
opt_state)`. Two lines in any training loop:

    tx = cci.sparsify(tx, cci.SparsitySpec(...))
    logits = model.apply({'params': cci.forward_params(params, opt_state)}, x)

Methods (METHODS.md 1.2):
  oneshot  the mask is computed once from the initial (pre-trained) weights and
           fixed; pruned weights stay exactly zero.
  gradual  the kept count falls from g to k along the cubic schedule between
           `begin_step` and `end_step`; the mask is recomputed every `update_every`
           steps and pruned weights are zeroed.
  dynamic  dense latent weights; the forward pass uses w * mask(w), with the mask
           recomputed every step; the gradient passes straight through to every
           latent weight, plus the SR-STE refinement `refinement * (1 - m) * w`;
           from `freeze_step` on the mask is fixed and pruned weights are zero.

Patterns: `cci` (exactly k of every group of g) or `unstructured`, the baseline of
METHODS.md section 3: each chosen kernel keeps its largest |w| at density k/g
(falling along Zhu & Gupta's continuous cubic schedule for `gradual`), no grouping.
"""

import dataclasses
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

  def update(grads, state: SparsityState, params=None):
    if params is None:
      raise ValueError('cci.sparsify needs params in update().')
    frozen = _frozen(spec, state.step)
    if spec.method == 'dynamic':
      # Straight-through gradients reach every latent weight; SR-STE pulls the
      # pruned ones towards zero. Once frozen, pruned weights get no gradient.
      grads = jax.tree.map(
          lambda g, w, m: jnp.where(frozen, g * m, g + spec.refinement * (~m) * w),
          grads, params, state.masks)
    updates, inner = tx.update(grads, state.inner, params)
    new_params = optax.apply_updates(params, updates)
    step = state.step + 1
    # gradual never revives a pruned weight (Zhu & Gupta): rank only the kept ones,
    # not momentum residue on pruned ones. dynamic lets any latent weight compete.
    ranked = new_params if spec.method == 'dynamic' else jax.tree.map(
        jnp.multiply, new_params, state.masks)
    fresh = compute_masks(ranked, spec, step)
    change = _mask_changes(spec, step)
    masks = jax.tree.map(lambda f, m: jnp.where(change, f, m), fresh, state.masks)
    zero = _frozen(spec, step)
    sparse = jax.tree.map(lambda w, m: jnp.where(zero, w * m, w), new_params, masks)
    updates = jax.tree.map(jnp.subtract, sparse, params)
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


def forward_params(params: Any, opt_state: Any, spec: SparsitySpec) -> Any:
  """The weights the forward pass uses: w * mask, straight-through while dynamic."""
  state = find_state(opt_state)
  frozen = _frozen(spec, state.step)

  def sparse(w, m):
    masked = w * m
    if spec.method != 'dynamic':
      return masked
    straight_through = w + jax.lax.stop_gradient(masked - w)
    return jnp.where(frozen, masked, straight_through)

  return jax.tree.map(sparse, params, state.masks)
