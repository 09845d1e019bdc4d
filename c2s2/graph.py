"""The channel dependency graph of any linen model, traced from its jaxpr (METHODS.md 2).

Pruning a channel slices every array axis coupled to it: the producing kernel's output
axis and bias, the norm's vectors and statistics, depth-wise kernels, and the input axis
of every consumer (at an offset after a concatenation, with a period after a flatten).
`trace_channel_graph` finds them by abstract interpretation of `jax.make_jaxpr`. The
channels are the last axis of activations; every value carries a tag for its last axis:
`_Act` (activation channels: channel spaces, union-find nodes, side by side), `_Param`
(derived from variables: the variable axis behind each array axis), a float (a known
scalar) or None (anything else). Activations combined element-wise share one space.
The graph never guesses: a primitive it does not know makes the spaces it touches
unprunable, with a reason; so does reaching the model output, or a site (the norm after
a producer, else the producer) whose masking would not zero the channel at a consumer.
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core


@dataclasses.dataclass(frozen=True)
class Coupling:
  """One array axis whose indices follow a channel group's channels."""
  collection: str  # variable collection: 'params', 'batch_stats', ...
  path: tuple[str, ...]  # key path inside the collection
  axis: int  # non-negative axis of that array
  offset: int = 0  # channel c of the group is index offset + c ...
  period: int = 0  # ... and, if period > 0, also every offset + c + r * period

  def indices(self, channels: Sequence[int], axis_size: int) -> np.ndarray:
    """Sorted indices along `axis` (of size axis_size) that hold `channels`."""
    first = self.offset + np.asarray(channels, int).reshape(-1)
    if first.size and first.max() >= axis_size:
      raise ValueError(f'{"/".join(self.path)} axis {self.axis}: channel index '
                       f'{first.max()} beyond its size {axis_size}.')
    if self.period:
      first = (first[:, None] + np.arange(0, axis_size, self.period)).reshape(-1)
    return np.sort(first[first < axis_size])


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """A set of channels that must be pruned together (one channel space).

  Sites are the modules after whose outputs a per-channel multiplier goes: for each
  producer (and each depth-wise conv passing the space on), the module whose vectors
  are first applied to its output (its norm), else the layer itself.
  """
  name: str  # module path of its first producer in execution order
  size: int
  producers: tuple[str, ...]  # convs / denses whose outputs make the space
  sites: tuple[str, ...]
  couplings: tuple[Coupling, ...]
  joined: bool  # made by more than one producer (a residual stream)
  prunable: bool
  reason: str  # why not prunable ('' if prunable)


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
  """The channel groups of a model, in execution order of their first producer."""
  groups: tuple[ChannelGroup, ...]

  def group(self, name: str) -> ChannelGroup:
    """The group called `name`; KeyError listing the valid names."""
    for group in self.groups:
      if group.name == name:
        return group
    raise KeyError(f'No channel group {name!r}; groups: {[g.name for g in self.groups]}.')

  def prunable(self) -> tuple[ChannelGroup, ...]:
    """The groups whose channels can be removed."""
    return tuple(group for group in self.groups if group.prunable)


@dataclasses.dataclass(frozen=True)
class _Act:
  segments: tuple[tuple[int | None, int], ...]  # (space or None, width), side by side
  period: int  # > 0 after a flatten: the segments repeat every `period` entries
  source: str  # the nearest producer, for reasons
  chain: tuple[str, bool] | None  # module whose vectors may follow; is its site open
  zero: frozenset[str] | str  # masked channels are 0 if these layers are sites; or why not


@dataclasses.dataclass(frozen=True)
class _Param:
  refs: frozenset[tuple[str, tuple[str, ...], tuple[int | None, ...]]]  # coll, path, axes


@dataclasses.dataclass
class _Space:
  size: int
  producers: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  layers: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # with sites
  couplings: list[Coupling] = dataclasses.field(default_factory=list)
  reasons: list[str] = dataclasses.field(default_factory=list)


_CALLS = {'pjit', 'jit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call',
          'custom_vjp_call_jaxpr', 'checkpoint', 'remat', 'remat2'}
_IDENTITY = {'copy', 'copy_p', 'device_put', 'optimization_barrier', 'sharding_constraint'}
_KEEP_ZERO = {  # element-wise f with f(0) == 0
    'neg', 'abs', 'sign', 'floor', 'ceil', 'round', 'sin', 'tan', 'tanh', 'asin', 'atan',
    'sinh', 'asinh', 'atanh', 'sqrt', 'cbrt', 'expm1', 'log1p', 'erf', 'square', 'real',
    'convert_element_type', 'reduce_precision', 'stop_gradient'}
_ADDITIVE = {'add', 'add_any', 'sub', 'max', 'min', 'select_n', 'or', 'xor'}
_ELEMENTWISE = _KEEP_ZERO | _ADDITIVE | {
    'mul', 'and', 'div', 'integer_pow', 'pow', 'exp', 'exp2', 'log', 'logistic', 'cos',
    'cosh', 'acos', 'acosh', 'rsqrt', 'erfc', 'erf_inv', 'not', 'is_finite', 'lgamma',
    'digamma', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'atan2', 'rem', 'clamp', 'nextafter'}
_REDUCTIONS = {'reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'reduce_and',
               'reduce_or', 'argmax', 'argmin'}


def _shape(var: Any) -> tuple[int, ...]:
  return tuple(var.aval.shape)


def _width(var: Any) -> int:
  return _shape(var)[-1] if _shape(var) else 1


def _unique(items: Iterable[Any]) -> list[Any]:
  return list(dict.fromkeys(items))


def _axis_map(eqn: Any) -> list[int | None] | None:
  """For each output axis of a layout op, the input axis it comes from (or None)."""
  name, params = eqn.primitive.name, eqn.params
  before, after = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
  if name == 'broadcast_in_dim':
    axes = [None] * len(after)
    for i, d in enumerate(params['broadcast_dimensions']):
      axes[d] = i if before[i] == after[d] else None
    return axes
  if name == 'transpose':
    return list(params['permutation'])
  if name == 'squeeze':
    return [i for i in range(len(before))
            if i not in {d % len(before) for d in params['dimensions']}]
  kept_in = [i for i, size in enumerate(before) if size != 1]
  kept_out = [i for i, size in enumerate(after) if size != 1]
  if (name != 'reshape' or params.get('dimensions') is not None
      or [before[i] for i in kept_in] != [after[i] for i in kept_out]):
    return None
  axes = [None] * len(after)
  for i, o in zip(kept_in, kept_out):
    axes[o] = i
  return axes


def _mixes_positions(eqn: Any, tags: list[Any]) -> bool:
  """Whether a dot_general is `constant @ activation` over non-channel axes only, with
  the channels last in its output (`train.models.segmentation.resize_bilinear`)."""
  (_, rhs_contract), (lhs_batch, _) = eqn.params['dimension_numbers']
  last = len(_shape(eqn.invars[1])) - 1
  return (tags[0] is None and isinstance(tags[1], _Act) and not lhs_batch
          and last not in rhs_contract)


def _channel_change(eqn: Any) -> str:
  """How a one-activation op changes the last axis (the channels); '' if it does not."""
  name, params, last = eqn.primitive.name, eqn.params, len(_shape(eqn.invars[0])) - 1
  if name in _REDUCTIONS:
    return 'reduction over channels' if last in params['axes'] else ''
  if name in ('cumsum', 'cumprod', 'cummax', 'cummin', 'split'):
    return 'scan or split along channels' if params['axis'] == last else ''
  if name in ('reduce_window_sum', 'reduce_window_max', 'reduce_window_min'):
    keys = ('window_dimensions', 'window_strides', 'base_dilation', 'window_dilation')
    pooled = any(params[k][-1] != 1 for k in keys) or tuple(params['padding'][-1]) != (0, 0)
    return 'pooling across channels' if pooled else ''
  if name == 'pad':
    return 'channel axis padded' if tuple(params['padding_config'][-1]) != (0, 0, 0) else ''
  if name == 'slice':
    kept = (params['start_indices'][-1] == 0
            and params['limit_indices'][-1] == _width(eqn.invars[0])
            and (params['strides'] is None or params['strides'][-1] == 1))
    return '' if kept else 'channel axis sliced'
  if name in ('broadcast_in_dim', 'transpose', 'squeeze'):
    axes = _axis_map(eqn)
    return '' if axes and axes[-1] == last else f'{name} moving channels'
  return 'unsupported primitive'


def _zero(name: str, eqn: Any, zeros: list[frozenset[str] | str]) -> frozenset[str] | str:
  """Whether an element-wise op's output is 0 on masked channels, from its operands'."""
  sets = [z for z in zeros if not isinstance(z, str)]
  if name in _KEEP_ZERO or (name == 'integer_pow' and eqn.params['y'] > 0):
    return zeros[0]
  if name in ('mul', 'and'):
    return min(sets, key=len) if sets else zeros[0]
  if name == 'div':
    return zeros[0]
  if name in _ADDITIVE or name == 'concatenate':
    operands = zeros[1:] if name == 'select_n' else zeros
    bad = [z for z in operands if isinstance(z, str)]
    return bad[0] if bad else frozenset().union(*operands)
  return f'{name} maps 0 to nonzero'


def _keeps_zero(name: str, tag: Any) -> bool:
  """Whether a known scalar operand keeps zeros zero: 0, or max(0, c < 0) and so on."""
  return isinstance(tag, float) and (
      tag == 0 or (name == 'max' and tag < 0) or (name == 'min' and tag > 0))


def _inert(eqn: Any, tags: list[Any]) -> list[Any]:
  """Output tags of an op without activation operands: variable axes and scalars."""
  name, outs = eqn.primitive.name, eqn.outvars
  if len(outs) != 1 or not tags:  # No operands (iota, constants): no channel axis.
    return [None] * len(outs)
  if isinstance(tags[0], float) and name in ('convert_element_type', 'broadcast_in_dim'):
    return [tags[0]]
  if name in _ELEMENTWISE:
    refs = [t.refs for t, v in zip(tags, eqn.invars)
            if isinstance(t, _Param) and len(_shape(v)) == len(_shape(outs[0]))]
    return [_Param(frozenset().union(*refs)) if refs else None]
  axes = _axis_map(eqn) if isinstance(tags[0], _Param) else None
  if axes is None:
    return [None]
  return [_Param(frozenset((c, p, tuple(None if i is None else a[i] for i in axes))
                           for c, p, a in tags[0].refs))]


def _module_at(where: str) -> str:
  """The module path in a name stack, without the root module and transforms."""
  return '/'.join([p for p in where.split('/') if '(' not in p][1:])


def _module(param: _Param) -> str:
  """The module of a kernel: its parameter path minus the last key."""
  return '/'.join(min(param.refs, key=lambda r: (r[0] != 'params', r[1]))[1][:-1])


class _Tracer:
  """Walks a jaxpr, tagging values and building the channel spaces."""

  def __init__(self, shapes: dict[tuple[str, tuple[str, ...]], tuple[int, ...]]):
    self.shapes = shapes
    self.spaces: list[_Space] = []
    self.parent: list[int] = []
    self.sites: dict[str, str] = {}  # layer -> module whose output gets the multiplier
    self.layer_spaces: dict[str, list[int]] = {}
    self.uses: list[tuple[_Act, str]] = []  # (consumer input, consumer)
    self.calls = 0  # layers so far, for execution order

  def run(self, jaxpr: Any, tags: list[Any], scope: str) -> list[Any]:
    env = dict(zip(jaxpr.invars, tags))

    def read(var):
      if isinstance(var, core.Literal):
        return float(var.val) if np.ndim(var.val) == 0 and np.isrealobj(var.val) else None
      return env.get(var)

    for eqn in jaxpr.eqns:
      where = '/'.join(s for s in (scope, str(eqn.source_info.name_stack)) if s)
      env.update(zip(eqn.outvars, self.eqn(eqn, [read(v) for v in eqn.invars], where)))
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn: Any, tags: list[Any], where: str) -> list[Any]:
    name, acts = eqn.primitive.name, [t for t in tags if isinstance(t, _Act)]
    if name in _CALLS:
      key = next(k for k in ('jaxpr', 'call_jaxpr', 'fun_jaxpr') if k in eqn.params)
      return self.run(getattr(eqn.params[key], 'jaxpr', eqn.params[key]), tags, where)
    if name == 'conv_general_dilated' and not isinstance(tags[0], _Param):
      return self.conv(eqn, tags, acts, where)
    if name == 'dot_general' and _mixes_positions(eqn, tags):
      return [self.mix_positions(eqn, tags[1], where)]
    if name == 'dot_general' and not isinstance(tags[0], _Param):
      return self.dot(eqn, tags, acts, where)
    if not acts:
      return _inert(eqn, tags)
    if name in _IDENTITY:
      return list(tags)
    if name == 'concatenate':
      if eqn.params['dimension'] == len(_shape(eqn.outvars[0])) - 1:
        return [self.concatenate(eqn, tags, acts, where)]
      return [self.elementwise(eqn, tags, acts, where)]
    if name in _ELEMENTWISE:
      return [self.elementwise(eqn, tags, acts, where)]
    if name == 'reshape':
      return self.reshape(eqn, acts[0], where)
    one = len(acts) == 1 and tags[0] is acts[0]
    change = _channel_change(eqn) if one else 'unsupported primitive'
    if change:
      return self.reject(eqn, acts, change, where)
    zero = acts[0].zero if name != 'pad' or tags[1] == 0.0 else f'pad after {acts[0].source}'
    return [dataclasses.replace(acts[0], zero=zero)] * len(eqn.outvars)

  # ------------------------------------------------------------------ spaces

  def find(self, space: int) -> int:
    while self.parent[space] != space:
      self.parent[space] = space = self.parent[self.parent[space]]
    return space

  def first_call(self, space: int) -> tuple[int, str]:
    return min(self.spaces[space].producers, default=(self.calls, ''))

  def union(self, a: int, b: int) -> None:
    a, b = sorted((self.find(a), self.find(b)), key=self.first_call)
    if a == b:
      return
    if self.spaces[a].size != self.spaces[b].size:
      for root in (a, b):
        self.spaces[root].reasons.append('parameter axis shared with a space of '
                                         'another size')
      return
    self.parent[b] = a
    for field in ('producers', 'layers', 'couplings', 'reasons'):
      getattr(self.spaces[a], field).extend(getattr(self.spaces[b], field))

  def add_layer(self, space: int, module: str) -> None:
    """`module` makes or passes on `space`: its site masks the space."""
    self.spaces[self.find(space)].layers.append((self.calls, module))
    self.layer_spaces.setdefault(module, []).append(space)
    self.calls += 1

  def new_space(self, size: int, reasons: list[str]) -> int:
    self.spaces.append(_Space(size, reasons=reasons))
    self.parent.append(len(self.parent))
    return len(self.parent) - 1

  def produce(self, module: str, kernel: _Param, var: Any, axis: int) -> _Act:
    """A new space made by `module`, its kernel's axis `axis` coupled."""
    size = _shape(var)[axis]
    space = self.new_space(size, [])
    self.spaces[space].producers.append((self.calls, module))
    self.add_layer(space, module)
    act = _Act(((space, size),), 0, module, (module, True), frozenset({module}))
    self.couple(act, kernel, axis, size)
    return act

  def mark(self, act: _Act, reason: str) -> None:
    for space, _ in act.segments:
      if space is not None:
        self.spaces[self.find(space)].reasons.append(reason)

  def reject(self, eqn: Any, acts: list[_Act], what: str, where: str) -> list[Any]:
    """Marks the spaces unprunable; the outputs carry the reason to what they join."""
    if not acts:
      return [None] * len(eqn.outvars)
    place = f'in {_module_at(where)}' if _module_at(where) else f'after {acts[0].source}'
    reason = f'{what} {place} ({eqn.primitive.name})'
    for act in acts:
      self.mark(act, reason)
    return [_Act(((self.new_space(_width(var), [reason]), _width(var)),), 0,
                 acts[0].source, None, frozenset()) for var in eqn.outvars]

  def couple(self, act: _Act, param: _Param, axis: int, size: int) -> set[str]:
    """Couples the variable axes behind `param`'s axis to the channels of `act`."""
    modules = set()
    for collection, path, axes in param.refs:
      if not axes or axes[axis] is None or self.shapes[collection, path][axes[axis]] != size:
        continue  # a scalar, or broadcast along the channels
      modules.add('/'.join(path[:-1]))
      offset = 0
      for space, width in act.segments:
        if space is not None:
          self.spaces[self.find(space)].couplings.append(
              Coupling(collection, path, axes[axis], offset, act.period))
        offset += width
    return modules

  def claim(self, layer: str, module: str) -> None:
    """`module` normalises the output of `layer`: it becomes the layer's site."""
    site = self.sites.setdefault(layer, module)
    if site != module:
      for space in self.layer_spaces[layer]:
        self.spaces[self.find(space)].reasons.append(
            f'output of {layer} normalised by both {site} and {module}')

  # ------------------------------------------------------------------ rules

  def conv(self, eqn: Any, tags: list[Any], acts: list[_Act], where: str) -> list[Any]:
    (lhs, rhs), (lhs_var, rhs_var), out_var = tags, eqn.invars, eqn.outvars[0]
    dims, groups = eqn.params['dimension_numbers'], eqn.params['feature_group_count']
    last = len(_shape(out_var)) - 1
    if not isinstance(rhs, _Param):
      return self.reject(eqn, acts, 'conv without a parameter kernel', where)
    module, c_in = _module(rhs), _width(lhs_var)
    if (eqn.params['batch_group_count'] != 1 or dims.lhs_spec[1] != last
        or dims.out_spec[1] != last):
      out = self.produce(module, rhs, rhs_var, dims.rhs_spec[0])
      return self.reject(eqn, [*acts, out], 'conv not channels-last', where)
    if groups == c_in == _width(out_var) and isinstance(lhs, _Act):  # depth-wise
      self.couple(lhs, rhs, dims.rhs_spec[0], c_in)
      for space, _ in lhs.segments:
        if space is not None:
          self.add_layer(space, module)
      return [_Act(lhs.segments, lhs.period, module, (module, True), frozenset({module}))]
    if isinstance(lhs, _Act):
      self.uses.append((lhs, module))
      self.couple(lhs, rhs, dims.rhs_spec[1], _shape(rhs_var)[dims.rhs_spec[1]])
    out = self.produce(module, rhs, rhs_var, dims.rhs_spec[0])
    if groups not in (1, c_in):
      self.reject(eqn, [*acts, out], f'grouped conv (feature_group_count={groups})', where)
    return [out]

  def dot(self, eqn: Any, tags: list[Any], acts: list[_Act], where: str) -> list[Any]:
    (lhs, rhs), (lhs_var, rhs_var) = tags, eqn.invars
    (lhs_contract, rhs_contract), (lhs_batch, _) = eqn.params['dimension_numbers']
    free = [d for d in range(len(_shape(rhs_var))) if d not in rhs_contract]
    if (not isinstance(rhs, _Param) or lhs_batch or len(free) != 1
        or tuple(lhs_contract) != (len(_shape(lhs_var)) - 1,)):
      return self.reject(eqn, acts, 'dot_general not contracting channels with a '
                         'parameter kernel', where)
    module = _module(rhs)
    if isinstance(lhs, _Act):
      self.uses.append((lhs, module))
      self.couple(lhs, rhs, rhs_contract[0], _width(lhs_var))
    return [self.produce(module, rhs, rhs_var, free[0])]

  def mix_positions(self, eqn: Any, act: _Act, where: str) -> _Act:
    """A constant matrix times the activation along a spatial axis (a resize): every
    channel is a linear map of itself, so 0 stays 0 and sites stay sites."""
    if act.period:
      return self.reject(eqn, [act], 'resize of flattened channels', where)[0]
    return act

  def reshape(self, eqn: Any, act: _Act, where: str) -> list[Any]:
    """Keeps channels when the new last axis is a multiple of the old period."""
    period, new = act.period or _width(eqn.invars[0]), _shape(eqn.outvars[0])
    if eqn.params.get('dimensions') is None and new and new[-1] % period == 0:
      return [dataclasses.replace(act, period=0 if new[-1] == period else period)]
    return self.reject(eqn, [act], 'reshape mixing channels', where)

  def concatenate(self, eqn: Any, tags: list[Any], acts: list[_Act], where: str) -> _Act:
    """Concatenated channels: the operands' segments side by side."""
    if any(act.period for act in acts):
      return self.reject(eqn, acts, 'concatenation of flattened channels', where)[0]
    segments = []
    for tag, var in zip(tags, eqn.invars):
      segments += tag.segments if isinstance(tag, _Act) else [(None, _width(var))]
    zero = _zero('concatenate', eqn, [act.zero for act in acts])
    return _Act(tuple(segments), 0, acts[-1].source, None, zero)

  def join(self, a: _Act, b: _Act, eqn: Any, where: str) -> _Act:
    """One channel space for activations combined element-wise."""
    if (a.period != b.period or [w for _, w in a.segments] != [w for _, w in b.segments]
        or any((x is None) != (y is None) for (x, _), (y, _) in zip(a.segments,
                                                                     b.segments))):
      return self.reject(eqn, [a, b], 'mismatched channel layouts', where)[0]
    for (x, _), (y, _) in zip(a.segments, b.segments):
      if x is not None:
        self.union(x, y)
    return a

  def elementwise(self, eqn: Any, tags: list[Any], acts: list[_Act], where: str) -> _Act:
    """Joins the activations, couples parameter vectors, and follows sites and zeros."""
    name, out, width = eqn.primitive.name, acts[0], _width(eqn.outvars[0])
    for other in acts[1:]:
      out = self.join(out, other, eqn, where)
    modules, zeros = set(), []
    for tag, var in zip(tags, eqn.invars):
      if isinstance(tag, _Act) or _keeps_zero(name, tag):
        zeros.append(tag.zero if isinstance(tag, _Act) else frozenset())
        continue
      coupled = self.couple(out, tag, -1, width) if isinstance(tag, _Param) else set()
      if not coupled and _width(var) > 1:
        return self.reject(eqn, acts, 'element-wise with a non-parameter array', where)[0]
      modules |= coupled
      zeros.append(f'{name} with {", ".join(sorted(coupled)) or "a constant"} after '
                   f'{out.source}')
    chain = self.merge_chains(acts)
    if chain and modules == {chain[0]}:  # the chain module's own vectors: before its site
      own = frozenset() if name in _ADDITIVE else 'own'
      zeros = [own if isinstance(t, _Param) else z for t, z in zip(tags, zeros)]
    elif chain and chain[1] and len(modules) == 1:  # the first norm after a layer
      self.claim(chain[0], *modules)
      return dataclasses.replace(out, chain=(*modules, False), zero=frozenset())
    elif modules:
      chain = None
    return dataclasses.replace(out, chain=chain, zero=_zero(name, eqn, zeros))

  def merge_chains(self, acts: list[_Act]) -> tuple[str, bool] | None:
    """The chain of a combination: a shared one, or a site and layers it closes."""
    chains = {act.chain for act in acts}
    closed = [c for c in chains if c and not c[1]]
    if len(chains) == 1 or (len(closed) == 1 and all(
        c == closed[0] or (c and self.sites.get(c[0]) == closed[0][0]) for c in chains)):
      return closed[0] if closed else acts[0].chain
    return None

  # ------------------------------------------------------------------ result

  def merge_shared(self) -> None:
    """Joins spaces coupled to the same entries of an axis; overlaps are unprunable."""
    owners: dict[Coupling, list[int]] = {}
    for root in {self.find(i) for i in range(len(self.spaces))}:
      for c in _unique(self.spaces[root].couplings):
        owners.setdefault(c, []).append(root)
    held: dict[tuple[str, tuple[str, ...], int], list[tuple[np.ndarray, int]]] = {}
    for c, roots in owners.items():
      for root in roots[1:]:
        self.union(roots[0], root)
      size = self.shapes[c.collection, c.path][c.axis]
      entries = np.zeros(size, int)
      entries[c.indices(range(self.spaces[self.find(roots[0])].size), size)] = 1
      held.setdefault((c.collection, c.path, c.axis), []).append((entries, roots[0]))
    for (_, path, axis), spaces in held.items():
      if sum(entries for entries, _ in spaces).max() > 1:
        for _, root in spaces:
          self.spaces[self.find(root)].reasons.append(
              f'{"/".join(path)} axis {axis} holds overlapping channel spaces')

  def check_sites(self) -> None:
    """Marks spaces whose channels, masked at the sites, are not 0 at a consumer."""
    for act, consumer in self.uses:
      if isinstance(act.zero, str):
        self.mark(act, f'masked channels not zero at {consumer}: {act.zero}')
        continue
      for layer in sorted(act.zero):
        if self.sites.get(layer, layer) != layer:
          self.mark(act, f'output of {layer} reaches {consumer} without passing '
                         f'{self.sites[layer]}')
    for layer, spaces in self.layer_spaces.items():
      site = self.sites.get(layer, layer)
      if any(other.startswith(f'{site}/') for other in self.layer_spaces):
        for space in spaces:  # its output is not where its vectors end
          self.spaces[self.find(space)].reasons.append(f'site {site} contains layers')

  def graph(self) -> ChannelGraph:
    self.merge_shared()
    self.check_sites()
    spaces = [s for i, s in enumerate(self.spaces) if self.find(i) == i and s.producers]
    groups = []
    for space in sorted(spaces, key=lambda s: min(s.producers)):
      producers = _unique(m for _, m in sorted(space.producers))
      reasons = _unique(space.reasons)
      groups.append(ChannelGroup(
          name=producers[0], size=space.size, producers=tuple(producers),
          sites=tuple(_unique(self.sites.get(m, m) for _, m in sorted(space.layers))),
          couplings=tuple(_unique(space.couplings)), joined=len(producers) > 1,
          prunable=not reasons, reason='; '.join(reasons)))
    return ChannelGraph(tuple(groups))


def trace_channel_graph(apply_fn: Callable[..., Any], variables: Any, *args: Any,
                        **kwargs: Any) -> ChannelGraph:
  """The channel graph of `apply_fn(variables, *args, **kwargs)`.

  Args:
    apply_fn: e.g. `lambda v, x: model.apply(v, x, train=False)`.
    variables: a nested dict of collections ('params', 'batch_stats', ...); arrays or
      `jax.ShapeDtypeStruct` leaves.
    *args: inputs; their array (or shape struct) leaves are traced, others are static.
    **kwargs: keyword inputs, as `args`.

  Returns:
    Every channel space made by a conv or dense layer, with its couplings. Every
    activation `apply_fn` returns counts as model output: return the logits only (not,
    say, updated batch statistics; train and eval mode give the same graph).
  """
  leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
  dynamic = [i for i, leaf in enumerate(leaves)
             if isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))]

  def call(v, arrays):
    full = list(leaves)
    for i, array in zip(dynamic, arrays):
      full[i] = array
    call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, full)
    return apply_fn(v, *call_args, **call_kwargs)

  closed = jax.make_jaxpr(call)(variables, [leaves[i] for i in dynamic])
  shapes, tags = {}, []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    keys = tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in key_path)
    shapes[keys[0], keys[1:]] = tuple(leaf.shape)
    tags.append(_Param(frozenset({(keys[0], keys[1:], tuple(range(len(leaf.shape))))})))
  tracer = _Tracer(shapes)
  for out in tracer.run(closed.jaxpr, tags + [None] * len(dynamic), ''):
    if isinstance(out, _Act):
      tracer.mark(out, f'model output ({out.source})')
  return tracer.graph()
