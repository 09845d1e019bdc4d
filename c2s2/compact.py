"""Run a model whose widths are hard-coded with the variables surgery made smaller.

After `c2s2.slice_variables` a conv that the model's code declares as `nn.Conv(64, ...)`
holds a `(kh, kw, c_in', 40)` kernel, and Flax refuses the mismatch. `compact_layers`
intercepts every `nn.Conv`, `nn.ConvTranspose`, `nn.Dense` and `nn.DenseGeneral` call
(`flax.linen.intercept_methods`, the model's code untouched) and runs the layer with
its `features` (and, for a depth-wise conv, `feature_group_count`) taken from its
sliced kernel for the duration of the call. Everything else reads its width from its
input (norms, pooling, activations). A width fixed anywhere else (a parameter of
hard-coded shape, a reshape to a fixed size, a branch on a width) cannot follow: the
call fails with `CompactApplyError` naming the innermost module it happened in, rather
than running a wrong model.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import numpy as np

_RESIZED = (nn.Conv, nn.ConvTranspose, nn.Dense, nn.DenseGeneral)


class CompactApplyError(ValueError):
  """A layer of the model cannot run with the sliced variables; names the layer."""


def _name(module: nn.Module) -> str:
  kind = type(module).__name__
  if module.scope is None:
    return f'an unbound {kind} (built with parent=None)'
  path = '/'.join(module.path)
  return f'{path} ({kind})' if path else f'the root module ({kind})'


def _input_width(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
  inputs = args[0] if args else kwargs['inputs']
  return int(np.shape(inputs)[-1])


def _conv_fields(module: nn.Conv, kernel_shape: tuple[int, ...],
                 in_width: int) -> dict[str, Any]:
  """`features` and `feature_group_count` of a conv with this kernel and input."""
  kernel_in, features = kernel_shape[-2:]
  groups = module.feature_group_count
  if kernel_in == 1 and groups > 1:  # depth-wise: one group per input channel
    groups = in_width
  if in_width != groups * kernel_in or features % groups:
    raise CompactApplyError(
        f'{_name(module)}: a {in_width}-channel input does not fit its sliced kernel '
        f'{kernel_shape} with feature_group_count={module.feature_group_count}.')
  return {'features': features, 'feature_group_count': groups}


def _fields(module: nn.Module, kernel_shape: tuple[int, ...],
            in_width: int) -> dict[str, Any]:
  """The attributes `module` needs to hold a kernel of `kernel_shape`."""
  if isinstance(module, nn.Conv):
    return _conv_fields(module, kernel_shape, in_width)
  if isinstance(module, nn.ConvTranspose):
    return {'features': kernel_shape[-2 if module.transpose_kernel else -1]}
  if isinstance(module, nn.DenseGeneral):
    if isinstance(module.features, int):
      return {'features': kernel_shape[-1]}
    return {'features': tuple(kernel_shape[len(kernel_shape) - len(module.features):])}
  return {'features': kernel_shape[-1]}


@contextlib.contextmanager
def _resized(module: nn.Module, fields: dict[str, Any]) -> Iterator[None]:
  """`module` with `fields` set for the duration of the context, then restored.

  Not a clone: a clone's call would pass every interceptor registered outside
  `compact_layers` (say `pruning_layers`) a second time, after the original call's.
  """
  before = {key: getattr(module, key) for key in fields}
  for key, value in fields.items():
    object.__setattr__(module, key, value)  # Flax freezes attributes after setup.
  try:
    yield
  finally:
    for key, value in before.items():
      object.__setattr__(module, key, value)


def _run_resized(next_fun: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], module: nn.Module) -> Any:
  """Calls `module` with the widths of its kernel (same path, scope and variables)."""
  params = module.variables.get('params', {})
  if 'kernel' not in params:  # not yet initialised (init): nothing to follow
    return next_fun(*args, **kwargs)
  kernel_shape = tuple(np.shape(nn.meta.unbox(params['kernel'])))
  fields = _fields(module, kernel_shape, _input_width(args, kwargs))
  with _resized(module, fields):
    return next_fun(*args, **kwargs)


def _hint(error: Exception) -> str:
  if isinstance(error, flax.errors.ScopeParamNotFoundError):
    return ("The model's code took a branch the original widths did not take (a "
            'condition on a hard-coded width?), so this layer has no variables.')
  return ('compact_apply sets the widths of Conv, ConvTranspose, Dense and DenseGeneral '
          'layers from their kernels; a width fixed anywhere else (a parameter of '
          'hard-coded shape, a reshape to a fixed size) cannot follow the pruned '
          'channels.')


@contextlib.contextmanager
def compact_layers() -> Iterator[None]:
  """Within the context, conv and dense layers take their widths from their kernels.

  Raises (from the model's call):
    CompactApplyError: a module cannot run with the variables given; the message
      names the innermost such module and the original error is chained.
  """

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    try:
      if context.method_name == '__call__' and isinstance(module, _RESIZED):
        return _run_resized(next_fun, args, kwargs, module)
      return next_fun(*args, **kwargs)
    except CompactApplyError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      raise CompactApplyError(
          f'{_name(module)} cannot run with the sliced variables: '
          f'{type(error).__name__}: {error}\n{_hint(error)}') from error

  with nn.intercept_methods(intercept):
    yield


def compact_apply(model: nn.Module) -> Callable[..., Any]:
  """`model.apply` that runs the model with sliced (compact) variables.

  Args:
    model: any linen module, its layer widths hard-coded or not.

  Returns:
    `apply(variables, *args, **kwargs)`, the signature of `model.apply` (`method`,
    `mutable` and `rngs` pass through), running under `compact_layers()`.
  """

  def apply(variables: Any, *args: Any, **kwargs: Any) -> Any:
    with compact_layers():
      return model.apply(variables, *args, **kwargs)

  return apply
