"""Batch norm folded into the conv or dense layer before it, for inference.

In inference a batch norm computes `(y - mean) * scale / sqrt(var + eps) + bias` per
channel. When `y` is the output of a conv (or dense) layer and nothing else reads `y`,
the norm is the same as that layer with its kernel's output channels multiplied by
`s = scale / sqrt(var + eps)` and a bias `(b - mean) * s + bias` (b: the layer's own
bias, or 0). `find_foldable` traces any linen model's call to find such pairs (from
the jaxpr, not the source: a conv output that is also read elsewhere is not folded,
and says why), `fold_batch_norm` is the pure function over the variables, and
`folded_apply` runs the model with the folded variables.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

FOLDED_BIAS = 'folded_bias'  # Variable collection: biases of folded bias-free layers.
_PRODUCERS = (nn.Conv, nn.Dense)


@dataclasses.dataclass(frozen=True)
class FoldPair:
  """A norm (module path) folded into the layer (module path) whose output it reads."""
  layer: str
  norm: str
  epsilon: float
  layer_has_bias: bool


@dataclasses.dataclass(frozen=True)
class Foldable:
  """What `find_foldable` found: pairs to fold, and each other norm with the reason."""
  pairs: tuple[FoldPair, ...]
  kept: Mapping[str, str]  # norm path -> why it stays a norm


def _mark_abstract_eval(x, **_):
  return jax.core.ShapedArray(x.shape, x.dtype)


_mark_p = core.Primitive('fold_mark')  # Identity, for the structure trace only.
_mark_p.def_abstract_eval(_mark_abstract_eval)


def _path(module: nn.Module) -> str:
  return '/'.join(module.path)


def _norm_problem(module: nn.BatchNorm, kwargs: Mapping[str, Any]) -> str:
  """Why this norm call cannot be folded ('' if it can)."""
  running = kwargs.get('use_running_average', module.use_running_average)
  if not running:
    return 'it normalises with batch statistics (training mode)'
  if module.axis != -1:
    return f'it normalises axis {module.axis}, not the channels (last axis)'
  return ''


def find_foldable(apply_fn: Callable[[Any, Any], Any], variables: Any,
                  example: Any) -> Foldable:
  """The batch norms of `apply_fn(variables, example)` that fold into a layer.

  Args:
    apply_fn: `apply(variables, x)` calling any linen modules (inference mode).
    variables: its variables (arrays or shapes).
    example: an input (array or shape).

  Returns:
    The foldable pairs, and for every other norm call the reason it is kept.
  """
  calls: dict[str, int] = {}
  norms: dict[str, tuple[nn.BatchNorm, str]] = {}

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    path = _path(module)
    calls[path] = calls.get(path, 0) + 1
    if isinstance(module, nn.BatchNorm):
      norms[path] = (module, _norm_problem(module, kwargs))
      args = (_mark_p.bind(args[0], role='norm', path=path), *args[1:])
      return next_fun(*args, **kwargs)
    out = next_fun(*args, **kwargs)
    if isinstance(module, _PRODUCERS):
      out = _mark_p.bind(out, role='layer', path=path)
    return out

  with nn.intercept_methods(intercept):
    closed = jax.make_jaxpr(apply_fn)(variables, example)
  sources = _norm_sources(closed.jaxpr)
  pairs, kept = [], {}
  for norm, (module, problem) in norms.items():
    layer, why = sources[norm]
    if not problem:
      problem = why or _repeated_call(calls, norm) or _repeated_call(calls, layer)
    if problem:
      kept[norm] = problem
    else:
      pairs.append(FoldPair(layer=layer, norm=norm, epsilon=float(module.epsilon),
                            layer_has_bias=module_bias(variables, layer)))
  return Foldable(tuple(pairs), kept)


def _repeated_call(calls: Mapping[str, int], path: str) -> str:
  return f'{path} is called {calls[path]} times' if calls[path] > 1 else ''


def module_bias(variables: Any, layer: str) -> bool:
  """Whether the layer at path `layer` has a 'bias' parameter."""
  return 'bias' in _subtree(variables['params'], layer)


def _jaxprs(jaxpr: Any) -> Iterator[Any]:
  """`jaxpr` and every jaxpr nested in its equations' parameters."""
  yield jaxpr
  for eqn in jaxpr.eqns:
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        if isinstance(sub, core.ClosedJaxpr):
          yield from _jaxprs(sub.jaxpr)
        elif isinstance(sub, core.Jaxpr):
          yield from _jaxprs(sub)


def _norm_sources(jaxpr: Any) -> dict[str, tuple[str | None, str]]:
  """Norm path -> (layer whose output is its input, '' or why it cannot fold)."""
  found = {}
  for sub in _jaxprs(jaxpr):
    uses: dict[Any, int] = {}
    for eqn in sub.eqns:
      for var in eqn.invars:
        if isinstance(var, core.Var):
          uses[var] = uses.get(var, 0) + 1
    for var in sub.outvars:
      if isinstance(var, core.Var):
        uses[var] = uses.get(var, 0) + 1
    layers = {eqn.outvars[0]: eqn.params['path'] for eqn in sub.eqns
              if eqn.primitive is _mark_p and eqn.params['role'] == 'layer'}
    for eqn in sub.eqns:
      if eqn.primitive is not _mark_p or eqn.params['role'] != 'norm':
        continue
      source = eqn.invars[0]
      layer = layers.get(source)
      if layer is None:
        found[eqn.params['path']] = (None, 'its input is not a conv or dense output')
      elif uses[source] > 1:
        found[eqn.params['path']] = (layer, f'the output of {layer} is also read '
                                     'elsewhere')
      else:
        found[eqn.params['path']] = (layer, '')
  return found


def _subtree(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
  for key in path.split('/'):
    tree = tree.get(key, {})
  return tree


def _with(tree: Mapping[str, Any], path: str, leaves: Mapping[str, Any] | None) -> dict:
  """A copy of `tree` whose subtree at `path` is `leaves` (removed for None)."""
  head, _, rest = path.partition('/')
  tree = dict(tree)
  if rest:
    tree[head] = _with(tree.get(head, {}), rest, leaves)
  elif leaves is None:
    tree.pop(head, None)
  else:
    tree[head] = dict(leaves)
  return tree


def fold_batch_norm(variables: Mapping[str, Any], pairs: tuple[FoldPair, ...]) -> dict:
  """The variables with each pair's norm folded into its layer (pure).

  Each layer's kernel is scaled per output channel; its bias becomes
  `(b - mean) * s + norm_bias` (in the `FOLDED_BIAS` collection for a bias-free
  layer); the norm's parameters and statistics are removed.
  """
  if not pairs:
    return variables
  out = {**variables, FOLDED_BIAS: dict(variables.get(FOLDED_BIAS, {}))}
  for pair in pairs:
    norm_params = _subtree(variables['params'], pair.norm)
    stats = _subtree(variables['batch_stats'], pair.norm)
    mean, var = stats['mean'], stats['var']
    scale = norm_params.get('scale', jnp.ones_like(var))
    shift = norm_params.get('bias', jnp.zeros_like(mean))
    factor = scale * jax.lax.rsqrt(var + pair.epsilon)
    layer = dict(_subtree(variables['params'], pair.layer))
    bias = (layer.get('bias', jnp.zeros_like(mean)) - mean) * factor + shift
    layer['kernel'] = layer['kernel'] * factor
    if pair.layer_has_bias:
      layer['bias'] = bias
    else:
      out[FOLDED_BIAS] = _with(out[FOLDED_BIAS], pair.layer, {'bias': bias})
    out['params'] = _with(_with(out['params'], pair.layer, layer), pair.norm, None)
    out['batch_stats'] = _with(out['batch_stats'], pair.norm, None)
  return out


def folded_apply(apply_fn: Callable[[Any, Any], Any],
                 pairs: tuple[FoldPair, ...]) -> Callable[[Any, Any], Any]:
  """`apply(folded_variables, x)`: `apply_fn` with each pair's norm an identity and
  each bias-free folded layer adding its bias from the `FOLDED_BIAS` collection."""
  norms = {pair.norm for pair in pairs}
  added = {pair.layer for pair in pairs if not pair.layer_has_bias}

  def intercept(next_fun, args, kwargs, context):
    path = _path(context.module)
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if path in norms:
      return args[0]
    out = next_fun(*args, **kwargs)
    if path in added:
      out = out + context.module.variables[FOLDED_BIAS]['bias'].astype(out.dtype)
    return out

  def apply(variables: Any, x: Any) -> Any:
    with nn.intercept_methods(intercept):
      return apply_fn(variables, x)

  return apply


def count_weights(variables: Any) -> int:
  """How many numbers the variables hold."""
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(variables)))
