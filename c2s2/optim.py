"""C2S2 selection as an optimiser and a forward pass (METHODS.md 2.2).

During the selection of a unit the trainable parameters are the model's, plus the
pruning-layer scales of the unit's groups under `SCALES_KEY`. `selection_optimizer`
partitions them with `optax.multi_transform`: the weights follow the ordinary
optimiser, the scales `pruning_layer_optimizer`, whose state carries phase 1's
importance sums and phase 2's binary masks. Phase 1's proximal step on
`loss + lambda * |scale|` is that transformation's gradient step followed by
`proximal_l1`, the L1 proximal operator applied to the updated parameters (the two
make `selection.proximal_sgd_step` bit for bit). `forward_params` folds the scales (and
masks) into the parameters of their sites, so the model itself never changes.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from c2s2 import selection, surgery
from c2s2.graph import ChannelGraph

SCALES_KEY = 'pruning_layers'  # The scales' entry beside the model's parameters.
PHASES = ('phase1', 'phase2')
_WEIGHTS, _SCALES = 'weights', 'scales'


class PruningLayerState(NamedTuple):
  """Group name -> (C,) arrays of the unit being selected.

  Attributes:
    importance: the accumulated |scale| of phase 1 (the order in which pruned channels
      are restored).
    masks: the binary masks (float) of phase 2; ones in phase 1.
  """
  importance: dict[str, jax.Array]
  masks: dict[str, jax.Array]


def pruning_layer_optimizer(phase: str, scale_learning_rate: float,
                            weight_learning_rate: float,
                            lambdas: Mapping[str, float]) -> optax.GradientTransformation:
  """The scales' optimiser: SGD at `scale_learning_rate` in phase 1 (whose
  `proximal_l1` result it adds to the importance), at `weight_learning_rate` in phase
  2 (pruned scales get no gradient through the fixed mask and stay 0). It updates the
  `SCALES_KEY` entry of the parameters and leaves the others' (masked by
  `selection_optimizer`) as they come.

  Args:
    phase: 'phase1' or 'phase2'; the state has the same shape in both.
    scale_learning_rate: phase 1's step size.
    weight_learning_rate: phase 2's step size.
    lambdas: group name -> L1 strength of phase 1.
  """
  if phase not in PHASES:
    raise ValueError(f'phase={phase!r}; choose one of {PHASES}.')

  def init(params):
    scales = params[SCALES_KEY]
    return PruningLayerState({n: jnp.zeros_like(s) for n, s in scales.items()},
                             {n: jnp.ones_like(s) for n, s in scales.items()})

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('pruning_layer_optimizer needs the parameters in update().')
    scales, grads = params[SCALES_KEY], updates[SCALES_KEY]
    rate = weight_learning_rate if phase == 'phase2' else scale_learning_rate
    steps = {n: -rate * g for n, g in grads.items()}
    if phase == 'phase1':
      new = proximal_l1(scale_learning_rate, lambdas)(
          {SCALES_KEY: optax.apply_updates(scales, steps)})[SCALES_KEY]
      state = PruningLayerState({n: state.importance[n] + jnp.abs(new[n]) for n in new},
                                state.masks)
    return {**updates, SCALES_KEY: steps}, state

  return optax.GradientTransformation(init, update)


def proximal_l1(scale_learning_rate: float, lambdas: Mapping[str, float]
                ) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
  """The proximal operator of `scale_learning_rate * lambda * |scale|` on the scales
  of parameters just updated by a gradient step (phase 1's)."""

  def project(params):
    return {**params, SCALES_KEY: {
        n: selection.soft_threshold(s, scale_learning_rate * lambdas[n])
        for n, s in params[SCALES_KEY].items()}}

  return project


def frozen(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx`'s state, kept as it is, and zero updates (phase 1 without weight training)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.zeros_like, updates), state

  return optax.GradientTransformation(tx.init, update)


def _labels(params: Mapping[str, Any]) -> dict[str, str]:
  return {k: _SCALES if k == SCALES_KEY else _WEIGHTS for k in params}


def selection_optimizer(weights_tx: optax.GradientTransformation, phase: str,
                        scale_learning_rate: float, weight_learning_rate: float,
                        lambdas: Mapping[str, float],
                        train_weights: bool = True) -> optax.GradientTransformation:
  """The weights with `weights_tx` (frozen unless `train_weights`), the scales under
  `SCALES_KEY` with `pruning_layer_optimizer`."""
  return optax.multi_transform(
      {_WEIGHTS: weights_tx if train_weights else frozen(weights_tx),
       _SCALES: pruning_layer_optimizer(phase, scale_learning_rate, weight_learning_rate,
                                        lambdas)}, _labels)


def layer_state(opt_state: Any) -> PruningLayerState:
  """The scales' state inside a `selection_optimizer` state."""
  return opt_state.inner_states[_SCALES].inner_state


def with_layer_state(opt_state: Any, state: PruningLayerState) -> Any:
  """`opt_state` whose scales' state is `state` (the weights' state kept)."""
  inner = opt_state.inner_states
  return opt_state._replace(inner_states={
      **inner, _SCALES: inner[_SCALES]._replace(inner_state=state)})


def with_unit(params: Mapping[str, Any], opt_state: Any, sizes: Mapping[str, int]
              ) -> tuple[dict[str, Any], Any]:
  """Fresh pruning layers (scale 1, importance 0, mask 1) for the groups in `sizes`
  (name -> channels); the model's parameters and the weights' state are kept."""
  scales = {n: jnp.ones(c) for n, c in sizes.items()}  # Distinct buffers (donated).
  state = PruningLayerState({n: jnp.zeros(c) for n, c in sizes.items()},
                            {n: jnp.ones(c) for n, c in sizes.items()})
  return {**params, SCALES_KEY: scales}, with_layer_state(opt_state, state)


def forward_params(graph: ChannelGraph, binary: bool
                   ) -> Callable[[Mapping[str, Any], Any], dict[str, Any]]:
  """The model's parameters with the unit's pruning layers folded into their sites;
  `binary`: with the masks of the optimiser state (phase 2 and the cost check)."""

  def forward(params, opt_state):
    model_params = {k: v for k, v in params.items() if k != SCALES_KEY}
    masks = layer_state(opt_state).masks if binary else None
    return surgery.fold_scales(model_params, graph, params[SCALES_KEY], masks)

  return forward


def kept_fraction(params: Mapping[str, Any], opt_state: Any) -> dict[str, jax.Array]:
  """The fraction of the unit's scales that are nonzero (a metric of the step)."""
  del opt_state
  scales = params[SCALES_KEY].values()
  size = sum(s.size for s in scales)
  if not size:
    return {}
  return {'kept_fraction': sum(jnp.sum(s != 0) for s in scales) / size}
