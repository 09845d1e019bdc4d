"""Attention heads in the channel graph: rules of the tracer for `Heads` tags.

A projection's output (Dense Q, K, V or a fused QKV) reshaped from (..., W) to
(..., [parts,] heads, head_dim) ties its channel space into head units (unit u holds
the head_dim channels of head u in every part); a DenseGeneral to (heads, head_dim), as
in flax's MultiHeadDotProductAttention, makes heads directly. From there the head axis
is followed through transposes, slices, reductions, element-wise ops (softmax, scaling,
masks) and `dot_general`s that batch over it (Q K^T, weights V), which join the Q, K
and V spaces into one; the reshape back to (..., heads * head_dim) makes channels again
for the output projection (or a DenseGeneral contracting (heads, head_dim) consumes
them). Anything else touching a head tensor makes its heads unprunable. Masked heads
stay exact because V's masked heads are zero, so their attention output is zero
whatever the softmax weights.
"""

import dataclasses
import math
from typing import Any

from c2s2.jaxpr_tags import (ADDITIVE, ELEMENTWISE, IDENTITY, REDUCTIONS, Act, Heads,
                             Param, axis_map, kernel_module, keeps_zero, module_at,
                             shape_of, zero_after)

_MOVES = {'broadcast_in_dim', 'transpose', 'squeeze', 'reshape'}


class HeadRules:
  """Mixin of the channel-graph tracer (`c2s2.graph._Tracer`) for attention heads.

  A split whose heads end up unprunable, or never meet a `dot_general` batching over
  them (a group norm splits channels too, but its groups cannot be removed), is undone:
  `trace_channel_graph` traces again with its id in `not_heads`, so the reshape counts
  as mixing channels and the space keeps its channels.
  """

  def failed_splits(self) -> set[int]:
    """Ids of the head splits to undo (after `graph()`)."""
    attended = {self.find(space) for space in self.attended}
    return {split for split, space in self.head_splits
            if self.spaces[self.find(space)].reasons or self.find(space) not in attended}

  def split_heads(self, eqn: Any, act: Act, where: str) -> list[Any] | None:
    """A reshape splitting the channels into (..., heads, head_dim); None otherwise."""
    before, after = shape_of(eqn.invars[0]), shape_of(eqn.outvars[0])
    lead = len(before) - 1
    if (len(act.segments) != 1 or act.period or act.segments[0][0] is None
        or eqn.params.get('dimensions') is not None or len(after) < lead + 2
        or tuple(after[:lead]) != tuple(before[:lead])
        or math.prod(after[lead:]) != before[-1]):
      return None
    if id(eqn) in self.not_heads:
      return None
    heads, head_dim = after[-2], after[-1]
    space, layer = act.segments[0][0], module_at(where) or act.source
    if not self.tie(space, heads, head_dim, f'the head split in {layer}'):
      return self.reject(eqn, [act], 'reshape mixing channels', where)
    self.head_splits.append((id(eqn), space))
    return [Heads(space, len(after) - 2, act.source, act.zero)]

  def produce_heads(self, module: str, kernel: Param, kernel_var: Any,
                    out_var: Any) -> Heads:
    """The heads made by a projection to (..., heads, head_dim), as flax's
    MultiHeadDotProductAttention's DenseGeneral query, key and value."""
    heads, head_dim = shape_of(kernel_var)[-2:]
    space = self.new_space(heads, [])
    self.spaces[space].unit, self.spaces[space].tied_by = head_dim, module
    self.spaces[space].producers.append((self.calls, module))
    self.add_layer(space, module, heads * head_dim)
    for collection, path, axes in kernel.refs:
      if axes and axes[-2] is not None:
        self.couple_units(space, collection, path, axes[-2])
    return Heads(space, len(shape_of(out_var)) - 2, module, frozenset({module}))

  def heads_eqn(self, eqn: Any, tags: list[Any], where: str) -> list[Any]:
    """Output tags of an op reading head tensors."""
    name = eqn.primitive.name
    heads = [t for t in tags if isinstance(t, Heads)]
    others = [t for t in tags if isinstance(t, Act)]
    if others:
      return self.reject(eqn, heads + others, 'heads mixed with channels', where)
    if name in IDENTITY:
      return list(tags)
    if name == 'dot_general':
      return self.heads_dot(eqn, tags, where)
    if len(eqn.outvars) == 1 and name in ELEMENTWISE:
      return self.heads_elementwise(eqn, tags, heads, where)
    if len(heads) == 1 and tags[0] is heads[0] and len(eqn.outvars) == 1:
      axis = self.head_axis_after(eqn, heads[0])
      if axis is not None:
        return [dataclasses.replace(heads[0], axis=axis)]
      if name == 'reshape':
        return self.merge_heads(eqn, heads[0], where)
    return self.reject(eqn, heads, 'head axis mixed or unsupported', where)

  def head_axis_after(self, eqn: Any, head: Heads) -> int | None:
    """Where a one-operand op leaves the head axis; None if it touches it."""
    name, params = eqn.primitive.name, eqn.params
    if name in REDUCTIONS:
      axes = params['axes']
      return None if head.axis in axes else head.axis - sum(a < head.axis for a in axes)
    if name == 'slice':
      full = (params['start_indices'][head.axis] == 0
              and params['limit_indices'][head.axis] == shape_of(eqn.invars[0])[head.axis]
              and (params['strides'] is None or params['strides'][head.axis] == 1))
      return head.axis if full else None
    if name in _MOVES:
      axes = axis_map(eqn)
      return axes.index(head.axis) if axes and head.axis in axes else None
    return None

  def merge_heads(self, eqn: Any, head: Heads, where: str) -> list[Any]:
    """(..., heads, head_dim) back to channels (..., heads * head_dim)."""
    before, after = shape_of(eqn.invars[0]), shape_of(eqn.outvars[0])
    if head.axis != len(before) - 2 or tuple(after) != (*before[:-2],
                                                         before[-2] * before[-1]):
      return self.reject(eqn, [head], 'reshape mixing channels', where)
    return [Act(((head.space, after[-1]),), 0, head.source, None, head.zero)]

  def heads_dot(self, eqn: Any, tags: list[Any], where: str) -> list[Any]:
    """Q K^T or weights V: a dot_general batching both operands over their heads."""
    (lhs, rhs), dims = tags, eqn.params['dimension_numbers']
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dims
    if (isinstance(lhs, Heads) and isinstance(rhs, Param) and not lhs_batch
        and tuple(lhs_contract) == (lhs.axis, lhs.axis + 1)
        and lhs.axis + 2 == len(shape_of(eqn.invars[0]))):
      return self.project_heads(eqn, lhs, rhs, rhs_contract[0])
    if not (isinstance(lhs, Heads) and isinstance(rhs, Heads) and lhs.axis in lhs_batch
            and rhs.axis in rhs_batch
            and list(lhs_batch).index(lhs.axis) == list(rhs_batch).index(rhs.axis)):
      return self.reject(eqn, [t for t in tags if isinstance(t, Heads)],
                         'dot_general not batching over heads', where)
    self.union(lhs.space, rhs.space)
    self.attended.update((lhs.space, rhs.space))
    zero = zero_after('mul', eqn, [lhs.zero, rhs.zero])
    return [Heads(lhs.space, list(lhs_batch).index(lhs.axis), lhs.source, zero)]

  def project_heads(self, eqn: Any, head: Heads, kernel: Param,
                    kernel_axis: int) -> list[Any]:
    """An output projection contracting (heads, head_dim), as flax's DenseGeneral with
    axis=(-2, -1): a consumer of the heads and the producer of a new space."""
    module, kernel_var = kernel_module(kernel), eqn.invars[1]
    self.uses.append((head, module))
    for collection, path, axes in kernel.refs:
      if axes and axes[kernel_axis] is not None:
        self.couple_units(head.space, collection, path, axes[kernel_axis])
    free = [d for d in range(len(shape_of(kernel_var))) if d not in
            eqn.params['dimension_numbers'][0][1]]
    if len(free) != 1:
      return self.reject(eqn, [head], 'projection of heads to several axes', '')
    return [self.produce(module, kernel, kernel_var, free[0])]

  def heads_elementwise(self, eqn: Any, tags: list[Any], heads: list[Heads],
                        where: str) -> list[Any]:
    """Softmax, scaling, masking: heads joined; per-head parameters coupled."""
    name, out = eqn.primitive.name, heads[0]
    rank = len(shape_of(eqn.outvars[0]))
    for other in heads[1:]:
      if other.axis != out.axis:
        return self.reject(eqn, heads, 'element-wise op on misaligned heads', where)
      self.union(out.space, other.space)
    zeros = []
    for tag, var in zip(tags, eqn.invars):
      if isinstance(tag, Heads) or keeps_zero(name, tag):
        zeros.append(tag.zero if isinstance(tag, Heads) else frozenset())
        continue
      if isinstance(tag, Param) and len(shape_of(var)) == rank:
        self.couple_heads(out, tag, out.axis, shape_of(var)[out.axis])
      own = (isinstance(tag, Param) and name in ADDITIVE and out.zero == {out.source}
             and {'/'.join(path[:-1]) for _, path, _ in tag.refs} == {out.source})
      zeros.append(frozenset() if own else  # the projection's bias: before its site
                   f'{name} with a non-head operand after {out.source}')
    return [dataclasses.replace(out, zero=zero_after(name, eqn, zeros))]

  def couple_heads(self, head: Heads, param: Param, axis: int, size: int) -> None:
    """Couples a per-head parameter axis (one entry per head) to the heads."""
    root = self.spaces[self.find(head.space)]
    for collection, path, axes in param.refs:
      if (axes and axes[axis] is not None and size == root.size > 1
          and self.shapes[collection, path][axes[axis]] == size):
        self.couple_units(head.space, collection, path, axes[axis])
