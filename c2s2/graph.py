"""The channel dependency graph of any linen model, traced from its jaxpr (METHODS.md 2).

Pruning a channel slices every array axis coupled to it: the producing kernel's output
axis and bias, the norm's vectors and statistics, depth-wise kernels, and the input axis
of every consumer (at an offset after a concatenation, with a period after a flatten).
`trace_channel_graph` finds them by abstract interpretation of `jax.make_jaxpr`. The
channels are the last axis of activations; every value carries a tag for its last axis:
`Act` (activation channels: channel spaces, union-find nodes, side by side), `Param`
(derived from variables: the variable axis behind each array axis), a float (a known
scalar) or None (anything else). Activations combined element-wise share one space.
The graph never guesses: a primitive it does not know makes the spaces it touches
unprunable, with a reason; so does reaching the model output, or a site (the norm after
a producer, else the producer) whose masking would not zero the channel at a consumer.

Some spaces are pruned in units of several channels (`_Tracer.tie`): a grouped conv ties
its input and output channels to their positions in the conv groups, so every conv
group loses the same positions; an attention head split (`c2s2.heads`) ties Q, K, V and
the output projection's input into heads. Couplings are then kept in units.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from c2s2.heads import HeadRules
from c2s2.jaxpr_tags import (ADDITIVE, CALLS, ELEMENTWISE, IDENTITY, Act, Heads, Param,
                             channel_change, inert, kernel_module, keeps_zero, module_at,
                             shape_of, spaces_of, unique, width_of, zero_after)


@dataclasses.dataclass(frozen=True)
class Coupling:
  """One array axis whose indices follow a channel group's units (channels, heads).

  Unit u of the group holds the entries offset + u * unit + i (i < unit) of the axis,
  repeated at every multiple of `stride` below stride * copies (one copy per conv group
  or per Q/K/V part of a fused projection), and, if period > 0, at every multiple of
  `period` (after a flatten).
  """
  collection: str  # variable collection: 'params', 'batch_stats', ...
  path: tuple[str, ...]  # key path inside the collection
  axis: int  # non-negative axis of that array
  offset: int = 0
  period: int = 0
  unit: int = 1  # consecutive entries per unit: 1 for a channel, head_dim for a head
  stride: int = 0  # distance between the copies
  copies: int = 1

  def indices(self, units: Sequence[int], axis_size: int) -> np.ndarray:
    """Sorted indices along `axis` (of size axis_size) that hold `units`."""
    first = self.offset + self.unit * np.asarray(units, int).reshape(-1)
    first = (first[:, None] + np.arange(self.unit)).reshape(-1)
    first = (first[:, None] + self.stride * np.arange(self.copies)).reshape(-1)
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

  The group is pruned in `size` units. A unit is one channel, except where channels are
  tied: after a grouped conv a unit is one channel position in every conv group (as
  Torch-Pruning does), and in attention a unit is a head (`unit` = head_dim consecutive
  channels, in each of Q, K and V). Masks, scales and importances have one entry per
  unit; `expand` spreads them over a site's channels.
  """
  name: str  # module path of its first producer in execution order
  size: int  # units
  producers: tuple[str, ...]  # convs / denses whose outputs make the space
  sites: tuple[str, ...]
  couplings: tuple[Coupling, ...]
  joined: bool  # made by more than one producer (a residual stream)
  prunable: bool
  reason: str  # why not prunable ('' if prunable)
  unit: int = 1  # consecutive channels per unit (head_dim for attention heads)
  site_widths: tuple[int, ...] = ()  # channels at each site

  def expand(self, values: Any, width: int) -> Any:
    """Per-unit `values` (last axis `size`) spread over `width` channels."""
    copies, rest = divmod(width, self.size * self.unit)
    if rest or not copies:
      raise ValueError(f'{self.name}: {width} channels do not hold {self.size} units of '
                       f'{self.unit}.')
    per_copy = jnp.repeat(values, self.unit, axis=-1) if self.unit > 1 else values
    return jnp.tile(per_copy, copies) if copies > 1 else per_copy

  def unit_sums(self, values: np.ndarray) -> np.ndarray:
    """Per-channel `values` (one axis, a multiple of size * unit) summed per unit."""
    return np.asarray(values).reshape(-1, self.size, self.unit).sum(axis=(0, 2))


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

  def at_sites(self, per_group: Mapping[str, Any]) -> dict[str, Any]:
    """{site: per-channel array} from {group name: per-unit array}, as
    `c2s2.pruning_layers` takes its scales and masks."""
    out = {}
    for name, values in per_group.items():
      group = self.group(name)
      for site, width in zip(group.sites, group.site_widths, strict=True):
        out[site] = group.expand(jnp.asarray(values), width)
    return out


@dataclasses.dataclass
class _Space:
  size: int  # units
  unit: int = 1  # channels per unit (head_dim once tied to attention heads)
  tied_by: str = ''  # the layer that tied its channels into units, if any
  producers: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  layers: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # with sites
  couplings: list[Coupling] = dataclasses.field(default_factory=list)
  reasons: list[str] = dataclasses.field(default_factory=list)


def _mixes_positions(eqn: Any, tags: list[Any]) -> bool:
  """Whether a dot_general is `constant @ activation` over non-channel axes only, with
  the channels last in its output (`train.models.segmentation.resize_bilinear`)."""
  (_, rhs_contract), (lhs_batch, _) = eqn.params['dimension_numbers']
  last = len(shape_of(eqn.invars[1])) - 1
  return (tags[0] is None and isinstance(tags[1], Act) and not lhs_batch
          and last not in rhs_contract)


class _Tracer(HeadRules):
  """Walks a jaxpr, tagging values and building the channel spaces."""

  def __init__(self, shapes: dict[tuple[str, tuple[str, ...]], tuple[int, ...]],
               not_heads: frozenset[int] = frozenset()):
    self.shapes = shapes
    self.not_heads = not_heads  # ids of reshapes not to take as head splits
    self.head_splits: list[tuple[int, int]] = []  # (reshape id, space)
    self.attended: set[int] = set()  # spaces whose heads a dot_general batched over
    self.spaces: list[_Space] = []
    self.parent: list[int] = []
    self.sites: dict[str, str] = {}  # layer -> module whose output gets the multiplier
    self.widths: dict[str, int] = {}  # layer -> channels of its output
    self.layer_spaces: dict[str, list[int]] = {}
    self.uses: list[tuple[Act, str]] = []  # (consumer input, consumer)
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
    name, acts = eqn.primitive.name, [t for t in tags if isinstance(t, Act)]
    if name in CALLS:
      key = next(k for k in ('jaxpr', 'call_jaxpr', 'fun_jaxpr') if k in eqn.params)
      return self.run(getattr(eqn.params[key], 'jaxpr', eqn.params[key]), tags, where)
    if any(isinstance(tag, Heads) for tag in tags):
      return self.heads_eqn(eqn, tags, where)
    if name == 'conv_general_dilated' and not isinstance(tags[0], Param):
      return self.conv(eqn, tags, acts, where)
    if name == 'dot_general' and _mixes_positions(eqn, tags):
      return [self.mix_positions(eqn, tags[1], where)]
    if name == 'dot_general' and not isinstance(tags[0], Param):
      return self.dot(eqn, tags, acts, where)
    if not acts:
      return inert(eqn, tags)
    if name in IDENTITY:
      return list(tags)
    if name == 'concatenate':
      if eqn.params['dimension'] == len(shape_of(eqn.outvars[0])) - 1:
        return [self.concatenate(eqn, tags, acts, where)]
      return [self.elementwise(eqn, tags, acts, where)]
    if name in ELEMENTWISE:
      return [self.elementwise(eqn, tags, acts, where)]
    if name == 'reshape':
      return self.reshape(eqn, acts[0], where)
    one = len(acts) == 1 and tags[0] is acts[0]
    change = channel_change(eqn) if one else 'unsupported primitive'
    if change:
      return self.reject(eqn, acts, change, where, tags)
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
    space_a, space_b = self.spaces[a], self.spaces[b]
    if (space_a.size, space_a.unit) != (space_b.size, space_b.unit):
      for one, other in ((space_a, space_b), (space_b, space_a)):
        one.reasons.append(f'joined with channels tied into units by {other.tied_by}'
                           if other.tied_by else
                           'parameter axis shared with a space of another size')
      return
    self.parent[b] = a
    for field in ('producers', 'layers', 'couplings', 'reasons'):
      getattr(self.spaces[a], field).extend(getattr(self.spaces[b], field))

  def add_layer(self, space: int, module: str, width: int) -> None:
    """`module` makes or passes on `space` (`width` channels): its site masks it."""
    self.spaces[self.find(space)].layers.append((self.calls, module))
    self.layer_spaces.setdefault(module, []).append(space)
    self.widths[module] = width
    self.calls += 1

  def tie(self, space: int, units: int, unit: int, layer: str) -> bool:
    """Ties the channels of `space` into `units` units of `unit` channels (copies
    repeat every units * unit channels); False (and a reason) if they cannot be."""
    root = self.spaces[self.find(space)]
    if (root.size, root.unit) == (units, unit):
      return True
    if root.tied_by or root.size % (units * unit):
      root.reasons.append(f'channels tied into units by both {root.tied_by} and {layer}'
                          if root.tied_by else f'{layer} splits {root.size} channels '
                          f'into units of {unit} in {units} parts')
      return False
    root.couplings = [_in_units(c, units, unit, root.size) for c in root.couplings]
    root.size, root.unit, root.tied_by = units, unit, layer
    return True

  def new_space(self, size: int, reasons: list[str]) -> int:
    self.spaces.append(_Space(size, reasons=reasons))
    self.parent.append(len(self.parent))
    return len(self.parent) - 1

  def produce(self, module: str, kernel: Param, var: Any, axis: int) -> Act:
    """A new space made by `module`, its kernel's axis `axis` coupled."""
    size = shape_of(var)[axis]
    space = self.new_space(size, [])
    self.spaces[space].producers.append((self.calls, module))
    self.add_layer(space, module, size)
    act = Act(((space, size),), 0, module, (module, True), frozenset({module}))
    self.couple(act, kernel, axis, size)
    return act

  def mark(self, tag: Act | Heads, reason: str) -> None:
    for space in spaces_of(tag):
      self.spaces[self.find(space)].reasons.append(reason)

  def couple_units(self, space: int, collection: str, path: tuple[str, ...],
                   axis: int) -> None:
    """Couples an axis holding one entry per unit of `space` (a per-head vector)."""
    self.spaces[self.find(space)].couplings.append(Coupling(collection, path, axis))

  def reject(self, eqn: Any, acts: list[Act | Heads], what: str, where: str,
             tags: Sequence[Any] = ()) -> list[Any]:
    """Marks the spaces unprunable; the outputs carry the reason to what they join.

    The reason names the module the op runs in, else the module whose variables it
    reads (a scanned or vmapped module: `tags` are the op's operand tags), else the
    layer before it.
    """
    if not acts:
      return [None] * len(eqn.outvars)
    module = module_at(where) or _common_module(tags)
    place = f'in {module}' if module else f'after {acts[0].source}'
    reason = f'{what} {place} ({eqn.primitive.name})'
    for act in acts:
      self.mark(act, reason)
    return [Act(((self.new_space(width_of(var), [reason]), width_of(var)),), 0,
                 acts[0].source, None, frozenset()) for var in eqn.outvars]

  def couple(self, act: Act, param: Param, axis: int, size: int) -> set[str]:
    """Couples the variable axes behind `param`'s axis to the channels of `act`."""
    modules = set()
    for collection, path, axes in param.refs:
      if not axes or axes[axis] is None or self.shapes[collection, path][axes[axis]] != size:
        continue  # a scalar, or broadcast along the channels
      modules.add('/'.join(path[:-1]))
      offset = 0
      for space, width in act.segments:
        if space is not None:
          root = self.spaces[self.find(space)]
          root.couplings.append(_in_units(
              Coupling(collection, path, axes[axis], offset, act.period), root.size,
              root.unit, width))
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

  def conv(self, eqn: Any, tags: list[Any], acts: list[Act], where: str) -> list[Any]:
    (lhs, rhs), (lhs_var, rhs_var), out_var = tags, eqn.invars, eqn.outvars[0]
    dims, groups = eqn.params['dimension_numbers'], eqn.params['feature_group_count']
    last = len(shape_of(out_var)) - 1
    if not isinstance(rhs, Param):
      return self.reject(eqn, acts, 'conv without a parameter kernel', where)
    module, c_in = kernel_module(rhs), width_of(lhs_var)
    if (eqn.params['batch_group_count'] != 1 or dims.lhs_spec[1] != last
        or dims.out_spec[1] != last):
      out = self.produce(module, rhs, rhs_var, dims.rhs_spec[0])
      return self.reject(eqn, [*acts, out], 'conv not channels-last', where)
    if groups == c_in == width_of(out_var) and isinstance(lhs, Act):  # depth-wise
      self.couple(lhs, rhs, dims.rhs_spec[0], c_in)
      for space, width in lhs.segments:
        if space is not None:
          self.add_layer(space, module, width)
      return [Act(lhs.segments, lhs.period, module, (module, True), frozenset({module}))]
    in_axis, per_group = dims.rhs_spec[1], shape_of(rhs_var)[dims.rhs_spec[1]]
    if isinstance(lhs, Act):
      self.uses.append((lhs, module))
      if groups == 1:
        self.couple(lhs, rhs, in_axis, per_group)
      else:
        self.grouped_input(lhs, rhs, in_axis, per_group, f'{module} (feature_group_count='
                           f'{groups})')
    out = self.produce(module, rhs, rhs_var, dims.rhs_spec[0])
    if groups > 1:  # Every conv group keeps the same output positions.
      self.tie(out.segments[0][0], width_of(out_var) // groups, 1, module)
    return [out]

  def grouped_input(self, lhs: Act, kernel: Param, in_axis: int, per_group: int,
                    conv: str) -> None:
    """A grouped conv reads input channel c at kernel index c % per_group: its input
    space is pruned by position, the same positions in every conv group."""
    space = lhs.segments[0][0]
    if len(lhs.segments) != 1 or lhs.period or space is None:
      self.mark(lhs, f'grouped conv {conv} reads concatenated or flattened channels')
    elif self.tie(space, per_group, 1, conv):
      self.couple(dataclasses.replace(lhs, segments=((space, per_group),)), kernel,
                  in_axis, per_group)

  def dot(self, eqn: Any, tags: list[Any], acts: list[Act], where: str) -> list[Any]:
    (lhs, rhs), (lhs_var, rhs_var) = tags, eqn.invars
    (lhs_contract, rhs_contract), (lhs_batch, _) = eqn.params['dimension_numbers']
    rank = len(shape_of(rhs_var))
    free = [d for d in range(rank) if d not in rhs_contract]
    if (not isinstance(rhs, Param) or lhs_batch or free not in ([rank - 1], [rank - 2,
                                                                            rank - 1])
        or tuple(lhs_contract) != (len(shape_of(lhs_var)) - 1,)):
      return self.reject(eqn, acts, 'dot_general not contracting channels with a '
                         'parameter kernel', where, tags)
    module = kernel_module(rhs)
    if isinstance(lhs, Act):
      self.uses.append((lhs, module))
      self.couple(lhs, rhs, rhs_contract[0], width_of(lhs_var))
    if len(free) == 2:  # DenseGeneral to (heads, head_dim)
      return [self.produce_heads(module, rhs, rhs_var, eqn.outvars[0])]
    return [self.produce(module, rhs, rhs_var, free[0])]

  def mix_positions(self, eqn: Any, act: Act, where: str) -> Act:
    """A constant matrix times the activation along a spatial axis (a resize): every
    channel is a linear map of itself, so 0 stays 0 and sites stay sites."""
    if act.period:
      return self.reject(eqn, [act], 'resize of flattened channels', where)[0]
    return act

  def reshape(self, eqn: Any, act: Act, where: str) -> list[Any]:
    """Keeps channels when the new last axis is a multiple of the old period."""
    period, new = act.period or width_of(eqn.invars[0]), shape_of(eqn.outvars[0])
    if eqn.params.get('dimensions') is None and new and new[-1] % period == 0:
      return [dataclasses.replace(act, period=0 if new[-1] == period else period)]
    return self.split_heads(eqn, act, where) or self.reject(
        eqn, [act], 'reshape mixing channels', where)

  def concatenate(self, eqn: Any, tags: list[Any], acts: list[Act], where: str) -> Act:
    """Concatenated channels: the operands' segments side by side."""
    if any(act.period for act in acts):
      return self.reject(eqn, acts, 'concatenation of flattened channels', where)[0]
    segments = []
    for tag, var in zip(tags, eqn.invars):
      segments += tag.segments if isinstance(tag, Act) else [(None, width_of(var))]
    zero = zero_after('concatenate', eqn, [act.zero for act in acts])
    return Act(tuple(segments), 0, acts[-1].source, None, zero)

  def join(self, a: Act, b: Act, eqn: Any, where: str) -> Act:
    """One channel space for activations combined element-wise."""
    if (a.period != b.period or [w for _, w in a.segments] != [w for _, w in b.segments]
        or any((x is None) != (y is None) for (x, _), (y, _) in zip(a.segments,
                                                                     b.segments))):
      return self.reject(eqn, [a, b], 'mismatched channel layouts', where)[0]
    for (x, _), (y, _) in zip(a.segments, b.segments):
      if x is not None:
        for tied, other in ((x, y), (y, x)):  # a tie spreads to the joined space
          tied_space = self.spaces[self.find(tied)]
          if tied_space.tied_by and not self.spaces[self.find(other)].tied_by:
            self.tie(other, tied_space.size, tied_space.unit, tied_space.tied_by)
        self.union(x, y)
    return a

  def elementwise(self, eqn: Any, tags: list[Any], acts: list[Act], where: str) -> Act:
    """Joins the activations, couples parameter vectors, and follows sites and zeros."""
    name, out, width = eqn.primitive.name, acts[0], width_of(eqn.outvars[0])
    for other in acts[1:]:
      out = self.join(out, other, eqn, where)
    modules, zeros = set(), []
    for tag, var in zip(tags, eqn.invars):
      if isinstance(tag, Act) or keeps_zero(name, tag):
        zeros.append(tag.zero if isinstance(tag, Act) else frozenset())
        continue
      coupled = self.couple(out, tag, -1, width) if isinstance(tag, Param) else set()
      if not coupled and width_of(var) > 1:
        return self.reject(eqn, acts, 'element-wise with a non-parameter array', where)[0]
      modules |= coupled
      zeros.append(f'{name} with {", ".join(sorted(coupled)) or "a constant"} after '
                   f'{out.source}')
    chain = self.merge_chains(acts)
    if chain and modules == {chain[0]}:  # the chain module's own vectors: before its site
      own = frozenset() if name in ADDITIVE else 'own'
      zeros = [own if isinstance(t, Param) else z for t, z in zip(tags, zeros)]
    elif chain and chain[1] and len(modules) == 1:  # the first norm after a layer
      self.claim(chain[0], *modules)
      return dataclasses.replace(out, chain=(*modules, False), zero=frozenset())
    elif modules:
      chain = None
    return dataclasses.replace(out, chain=chain, zero=zero_after(name, eqn, zeros))

  def merge_chains(self, acts: list[Act]) -> tuple[str, bool] | None:
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
      for c in unique(self.spaces[root].couplings):
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
      producers = unique(m for _, m in sorted(space.producers))
      sites: dict[str, int] = {}  # site -> its channels, in execution order
      for _, layer in sorted(space.layers):
        sites.setdefault(self.sites.get(layer, layer), self.widths[layer])
      reasons = unique(space.reasons)
      groups.append(ChannelGroup(
          name=producers[0], size=space.size, producers=tuple(producers),
          sites=tuple(sites), site_widths=tuple(sites.values()),
          unit=space.unit,
          couplings=tuple(unique(space.couplings)), joined=len(producers) > 1,
          prunable=not reasons, reason='; '.join(reasons)))
    return ChannelGraph(tuple(groups))


def _common_module(tags: Sequence[Any]) -> str:
  """The deepest module holding every variable that `tags` read ('' if none)."""
  paths = [path[:-1] for tag in tags if isinstance(tag, Param) for _, path, _ in tag.refs]
  common = paths[0] if paths else ()
  for path in paths[1:]:
    shared = 0
    while shared < min(len(common), len(path)) and common[shared] == path[shared]:
      shared += 1
    common = common[:shared]
  return '/'.join(common)


def _in_units(coupling: Coupling, units: int, unit: int, width: int) -> Coupling:
  """A coupling of a `width`-channel array as a coupling of units (see `tie`)."""
  copies = width // (units * unit)
  return dataclasses.replace(coupling, unit=unit, copies=copies,
                             stride=units * unit if copies > 1 else 0)


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
    tags.append(Param(frozenset({(keys[0], keys[1:], tuple(range(len(leaf.shape))))})))
  not_heads = frozenset()
  while True:  # Again without the head splits whose heads cannot be pruned.
    tracer = _Tracer(shapes, not_heads)
    for out in tracer.run(closed.jaxpr, tags + [None] * len(dynamic), ''):
      if isinstance(out, (Act, Heads)):
        tracer.mark(out, f'model output ({out.source})')
    graph = tracer.graph()
    failed = tracer.failed_splits()
    if not failed:
      return graph
    not_heads |= failed
