"""C2S2 on Flax NNX models: the channel graph, scale folding and a compact `nnx.Module`.

The method's core works on pure functions of nested dicts of variables. This adapter
gives an NNX model that form: `functional(model)` returns `apply(variables, *args)`
(an `nnx.merge` of the model's graph definition with the given variables, then a call)
and the variables as `{'params': ..., 'batch_stats': ..., ...}` with string keys
('layers/0/kernel' for an `nnx.List`), so `c2s2.trace_channel_graph`, `fold_scales`,
`plan`, `slice_variables` and `c2s2.criteria` run unchanged. `compact` returns a new
NNX model with the pruned channels removed and each layer's width attributes
(`in_features`, `out_features`, `num_features`, `feature_group_count`, `kernel_shape`)
set from its sliced arrays; the user's model is not modified.

Pruning layers are folded into their sites (`c2s2.fold_scales` on the params) rather
than inserted as modules: the same function, and the model's state keeps its paths.
"""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from c2s2 import graph as graph_lib
from c2s2 import surgery

Variables = dict[str, dict[str, Any]]

_COLLECTIONS = {nnx.Param: 'params', nnx.BatchStat: 'batch_stats'}
_NORMS = (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm)


class CompactModelError(ValueError):
  """A layer of an NNX model cannot take the sliced arrays; names the layer."""


def collection_of(variable: nnx.Variable) -> str:
  """'params' for `nnx.Param`, 'batch_stats' for `nnx.BatchStat`, else the type name."""
  for kind, name in _COLLECTIONS.items():
    if isinstance(variable, kind):
      return name
  return type(variable).__name__


def _keys(path: tuple[Any, ...]) -> tuple[str, ...]:
  return tuple(str(key) for key in path)


def _flat(model: nnx.Module) -> list[tuple[tuple[Any, ...], nnx.Variable]]:
  return list(nnx.to_flat_state(nnx.state(model)))


def variables_of(model: nnx.Module) -> Variables:
  """The model's arrays as `{collection: nested dict}` with string keys."""
  out: Variables = {}
  for path, variable in _flat(model):
    node = out.setdefault(collection_of(variable), {})
    *parents, last = _keys(path)
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = variable.get_value()
  return out


def _state_with(flat: list[tuple[tuple[Any, ...], nnx.Variable]],
                variables: Mapping[str, Any]) -> nnx.State:
  """An `nnx.State` of the model's variables holding the arrays of `variables`."""
  entries = []
  for path, variable in flat:
    value = variables[collection_of(variable)]
    for key in _keys(path):
      value = value[key]
    entries.append((path, variable.replace(value)))
  return nnx.from_flat_state(entries)


def functional(model: nnx.Module) -> tuple[Callable[..., Any], Variables]:
  """The model as a pure function of its variables, in the model's current mode.

  Returns:
    `(apply, variables)`: `apply(variables, *args, **kwargs)` returns
    `(model(*args, **kwargs), variables after the call)` (batch statistics updated in
    training mode), and the model's variables (see `variables_of`).
  """
  graphdef, _ = nnx.split(model)
  flat = _flat(model)

  def apply(variables: Mapping[str, Any], *args: Any, **kwargs: Any) -> tuple[Any, Variables]:
    merged = nnx.merge(graphdef, _state_with(flat, variables))
    out = merged(*args, **kwargs)
    return out, variables_of(merged)

  return apply, variables_of(model)


def trace_channel_graph(model: nnx.Module, *args: Any,
                        **kwargs: Any) -> graph_lib.ChannelGraph:
  """The channel graph of `model(*args, **kwargs)` (its output should be the logits).

  Groups and sites are named by the model's attribute paths ('blocks/0/conv1'), the
  names `compact`, `c2s2.fold_scales` and `c2s2.criteria` take.
  """
  apply, variables = functional(model)
  return graph_lib.trace_channel_graph(lambda v, *a, **k: apply(v, *a, **k)[0],
                                       variables, *args, **kwargs)


def _name(path: tuple[str, ...], module: nnx.Module) -> str:
  where = '/'.join(path)
  kind = type(module).__name__
  return f'{where} ({kind})' if where else f'the root module ({kind})'


def _conv_fields(module: nnx.Conv, kernel: tuple[int, ...], name: str) -> dict[str, Any]:
  kernel_in, features = kernel[-2:]
  groups = module.feature_group_count
  if groups > 1 and module.kernel_shape[-2] == 1 and module.in_features == module.out_features:
    groups = features  # depth-wise: one group per channel, c_in == c_out (as the graph)
  if features % groups:
    raise CompactModelError(f'{name}: a sliced kernel {kernel} does not fit '
                            f'feature_group_count={module.feature_group_count}.')
  return {'in_features': kernel_in * groups, 'out_features': features,
          'feature_group_count': groups, 'kernel_shape': kernel}


def _fields(module: nnx.Module, shapes: dict[str, tuple[int, ...]],
            name: str) -> dict[str, Any]:
  """The width attributes `module` needs to hold arrays of `shapes` (by attribute)."""
  if getattr(module, 'mask', None) is not None:
    raise CompactModelError(f'{name} has a fixed kernel mask of the original shape.')
  if isinstance(module, nnx.Conv):
    return _conv_fields(module, shapes['kernel'], name)
  if isinstance(module, nnx.ConvTranspose):
    kernel = shapes['kernel']
    c_in, c_out = kernel[-2:][::-1] if module.transpose_kernel else kernel[-2:]
    return {'in_features': c_in, 'out_features': c_out, 'kernel_shape': kernel}
  if isinstance(module, nnx.Linear):
    return dict(zip(('in_features', 'out_features'), shapes['kernel']))
  if isinstance(module, nnx.LinearGeneral):
    split = len(module.in_features)
    return {'in_features': shapes['kernel'][:split],
            'out_features': shapes['kernel'][split:]}
  if isinstance(module, _NORMS):
    widths = {shape[-1] for shape in shapes.values()}
    if len(widths) == 1:
      return {'num_features': widths.pop()}
  raise CompactModelError(
      f'{name} holds arrays whose channels were removed ({shapes}), but compact sets '
      'the widths of nnx.Conv, ConvTranspose, Linear, LinearGeneral, BatchNorm, '
      'LayerNorm and RMSNorm only; a module of another type may hard-code its width.')


def with_variables(model: nnx.Module, variables: Mapping[str, Any]) -> nnx.Module:
  """A copy of `model` holding `variables` (any widths), its layers' attributes set.

  Raises:
    CompactModelError: a module whose arrays changed shape is not a layer whose width
      attributes are known (names it); the user's model is untouched.
  """
  copy = nnx.clone(model)
  flat = _flat(copy)
  state = _state_with(flat, variables)
  before = {_keys(path): np.shape(variable.get_value()) for path, variable in flat}
  after = {_keys(path): np.shape(variable.get_value())
           for path, variable in nnx.to_flat_state(state)}
  changed = {path[:-1] for path, shape in after.items() if shape != before[path]}
  resized = []
  for path, module in nnx.iter_graph(copy):
    if isinstance(module, nnx.Module) and _keys(path) in changed:
      shapes = {key[-1]: tuple(shape) for key, shape in after.items()
                if key[:-1] == _keys(path)}
      resized.append((module, _fields(module, shapes, _name(_keys(path), module))))
  for module, fields in resized:
    for key, value in fields.items():
      setattr(module, key, value)
  nnx.update(copy, state)
  return copy


def compact(model: nnx.Module, graph: graph_lib.ChannelGraph,
            masks: Mapping[str, np.ndarray],
            scales: Mapping[str, Any] | None = None) -> nnx.Module:
  """A new NNX model without the channels `masks` removes (the model is untouched).

  Args:
    model: the NNX model whose graph `graph` is (`trace_channel_graph`).
    graph: its channel graph.
    masks: group name -> bool mask of its channels (True = kept).
    scales: group name -> pruning-layer scale folded into the group's sites first
      (the masked model's function); none: the kept channels are unchanged.

  Raises:
    ValueError: a mask `c2s2.plan` refuses (an unprunable group, wrong size, none kept).
    CompactModelError: a module that cannot take its sliced arrays (names it).
  """
  variables = variables_of(model)
  params = variables['params']
  for name, scale in (scales or {}).items():
    params = surgery.fold_scale(params, graph.group(name),
                                scale * np.asarray(masks.get(name, True), scale.dtype))
  removal = surgery.plan(graph, masks, variables)
  return with_variables(model,
                        surgery.slice_variables({**variables, 'params': params}, removal))
