"""Tags of jaxpr values and primitive tables for the channel-graph tracer (c2s2.graph).

Every value the tracer reads carries a tag for its last axis: `Act` (activation
channels: channel spaces side by side), `Param` (derived from variables: the variable
axis behind each array axis), a float (a known scalar) or None (anything else);
`c2s2.heads` adds `Heads` (an attention tensor with a head axis). The functions here are
pure: they read one equation and its operands' tags.
"""

import dataclasses
from collections.abc import Iterable
from typing import Any

@dataclasses.dataclass(frozen=True)
class Act:
  segments: tuple[tuple[int | None, int], ...]  # (space or None, width), side by side
  period: int  # > 0 after a flatten: the segments repeat every `period` entries
  source: str  # the nearest producer, for reasons
  chain: tuple[str, bool] | None  # module whose vectors may follow; is its site open
  zero: frozenset[str] | str  # masked channels are 0 if these layers are sites; or why not


@dataclasses.dataclass(frozen=True)
class Param:
  refs: frozenset[tuple[str, tuple[str, ...], tuple[int | None, ...]]]  # coll, path, axes


CALLS = {'pjit', 'jit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call',
          'custom_vjp_call_jaxpr', 'checkpoint', 'remat', 'remat2'}
IDENTITY = {'copy', 'copy_p', 'device_put', 'optimization_barrier', 'sharding_constraint'}
KEEP_ZERO = {  # element-wise f with f(0) == 0
    'neg', 'abs', 'sign', 'floor', 'ceil', 'round', 'sin', 'tan', 'tanh', 'asin', 'atan',
    'sinh', 'asinh', 'atanh', 'sqrt', 'cbrt', 'expm1', 'log1p', 'erf', 'square', 'real',
    'convert_element_type', 'reduce_precision', 'stop_gradient'}
ADDITIVE = {'add', 'add_any', 'sub', 'max', 'min', 'select_n', 'or', 'xor'}
ELEMENTWISE = KEEP_ZERO | ADDITIVE | {
    'mul', 'and', 'div', 'integer_pow', 'pow', 'exp', 'exp2', 'log', 'logistic', 'cos',
    'cosh', 'acos', 'acosh', 'rsqrt', 'erfc', 'erf_inv', 'not', 'is_finite', 'lgamma',
    'digamma', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'atan2', 'rem', 'clamp', 'nextafter'}
REDUCTIONS = {'reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'reduce_and',
               'reduce_or', 'argmax', 'argmin'}


def shape_of(var: Any) -> tuple[int, ...]:
  return tuple(var.aval.shape)


def width_of(var: Any) -> int:
  return shape_of(var)[-1] if shape_of(var) else 1


def unique(items: Iterable[Any]) -> list[Any]:
  return list(dict.fromkeys(items))


def axis_map(eqn: Any) -> list[int | None] | None:
  """For each output axis of a layout op, the input axis it comes from (or None)."""
  name, params = eqn.primitive.name, eqn.params
  before, after = shape_of(eqn.invars[0]), shape_of(eqn.outvars[0])
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


def channel_change(eqn: Any) -> str:
  """How a one-activation op changes the last axis (the channels); '' if it does not."""
  name, params, last = eqn.primitive.name, eqn.params, len(shape_of(eqn.invars[0])) - 1
  if name in REDUCTIONS:
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
            and params['limit_indices'][-1] == width_of(eqn.invars[0])
            and (params['strides'] is None or params['strides'][-1] == 1))
    return '' if kept else 'channel axis sliced'
  if name in ('broadcast_in_dim', 'transpose', 'squeeze'):
    axes = axis_map(eqn)
    return '' if axes and axes[-1] == last else f'{name} moving channels'
  return 'unsupported primitive'


def zero_after(name: str, eqn: Any,
               zeros: list[frozenset[str] | str]) -> frozenset[str] | str:
  """Whether an element-wise op's output is 0 on masked channels, from its operands'."""
  sets = [z for z in zeros if not isinstance(z, str)]
  if name in KEEP_ZERO or (name == 'integer_pow' and eqn.params['y'] > 0):
    return zeros[0]
  if name in ('mul', 'and'):
    return min(sets, key=len) if sets else zeros[0]
  if name == 'div':
    return zeros[0]
  if name in ADDITIVE or name == 'concatenate':
    operands = zeros[1:] if name == 'select_n' else zeros
    bad = [z for z in operands if isinstance(z, str)]
    return bad[0] if bad else frozenset().union(*operands)
  return f'{name} maps 0 to nonzero'


def keeps_zero(name: str, tag: Any) -> bool:
  """Whether a known scalar operand keeps zeros zero: 0, or max(0, c < 0) and so on."""
  return isinstance(tag, float) and (
      tag == 0 or (name == 'max' and tag < 0) or (name == 'min' and tag > 0))


def inert(eqn: Any, tags: list[Any]) -> list[Any]:
  """Output tags of an op without activation operands: variable axes and scalars."""
  name, outs = eqn.primitive.name, eqn.outvars
  if len(outs) != 1 or not tags:  # No operands (iota, constants): no channel axis.
    return [None] * len(outs)
  if isinstance(tags[0], float) and name in ('convert_element_type', 'broadcast_in_dim'):
    return [tags[0]]
  if name in ELEMENTWISE:
    refs = [t.refs for t, v in zip(tags, eqn.invars)
            if isinstance(t, Param) and len(shape_of(v)) == len(shape_of(outs[0]))]
    return [Param(frozenset().union(*refs)) if refs else None]
  axes = axis_map(eqn) if isinstance(tags[0], Param) else None
  if axes is None:
    return [None]
  return [Param(frozenset((c, p, tuple(None if i is None else a[i] for i in axes))
                           for c, p, a in tags[0].refs))]


def module_at(where: str) -> str:
  """The module path in a name stack, without the root module and transforms."""
  return '/'.join([p for p in where.split('/') if '(' not in p][1:])


def kernel_module(param: Param) -> str:
  """The module of a kernel: its parameter path minus the last key."""
  return '/'.join(min(param.refs, key=lambda r: (r[0] != 'params', r[1]))[1][:-1])


@dataclasses.dataclass(frozen=True)
class Heads:
  """An attention tensor: axis `axis` holds the heads of channel space `space` (the
  units of a space tied to heads); the other axes never mix heads."""
  space: int
  axis: int  # non-negative
  source: str  # the projection that made the heads, for reasons
  zero: frozenset[str] | str  # as Act.zero: masked heads are 0 if these layers are sites


def spaces_of(tag: Any) -> list[int]:
  """The channel spaces an Act or Heads tag carries."""
  if isinstance(tag, Heads):
    return [tag.space]
  return [space for space, _ in tag.segments if space is not None]
