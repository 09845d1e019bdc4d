"""Inference artifacts of any model: StableHLO (`jax.export`) and ONNX (jax2onnx).

`export(model_fn, variables, example_input, directory)` writes, for a linen module or
any pure function `apply(variables, x)` (an NNX model too, as
`lambda state, x: nnx.merge(graphdef, state)(x)`; its norms are not folded):

- `model.stablehlo`: a serialized `jax.export.Exported`, with a symbolic batch
  dimension unless a batch size is given; `jax.export.deserialize` loads it with jax
  alone (docs/export.md).
- `model.onnx`: the same function converted by jax2onnx, run by ONNX Runtime (the
  optional extras of requirements-export.txt).
- `manifest.json`: input and output shapes, the folded batch norms, the largest
  difference between each artifact's output and the model's on the example input.

Batch norms that follow a conv or dense layer are folded into it first
(`train/folding.py`). Everything is written into a temporary directory that replaces
`directory` only when every artifact was written, reloaded and checked: a failed
export leaves nothing behind, and an earlier export in `directory` untouched.
"""

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from train import folding
from train import workdir as workdir_lib

FORMATS = ('stablehlo', 'onnx')
FILES = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}
EXTRAS_FILE = 'requirements-export.txt'
ONNX_MODULES = ('jax2onnx', 'onnxruntime')
# Modules each format needs, and the requirements file that installs them.
REQUIRES = {'stablehlo': (('flatbuffers',), 'requirements.txt'),
            'onnx': (ONNX_MODULES, EXTRAS_FILE)}
ONNX_OPSET = 23
BATCH_AXIS_NAME = 'batch'
# An artifact's output may differ from the model's by float rounding only: at most
# this fraction of the model's largest output magnitude (or of 1 if that is smaller).
RELATIVE_TOLERANCE = 1e-4
# Primitives that only call a jaxpr: the ONNX conversion inlines them.
_CALLS = {'pjit', 'jit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call',
          'remat', 'checkpoint'}

Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(ValueError):
  """An export that cannot be made; the message names the format, file or setting."""


def parse_formats(formats: Sequence[str]) -> tuple[str, ...]:
  """Validated formats, in the order given; ONNX needs its optional extras installed."""
  formats = tuple(f.strip() for f in formats if f.strip())
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ExportError(f'Unknown export format(s) {unknown or formats}; choose from '
                      f'{", ".join(FORMATS)}.')
  for fmt in formats:
    modules, requirements = REQUIRES[fmt]
    missing = [m for m in modules if not _installed(m)]
    if missing:
      raise ExportError(f'The {fmt} format needs {", ".join(missing)}: pip install -r '
                        f'{requirements}.')
  return formats


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def parse_batch(batch: str | int) -> int | None:
  """None for 'dynamic' (a symbolic batch dimension), else the fixed batch size."""
  if str(batch) == 'dynamic':
    return None
  try:
    size = int(batch)
  except ValueError:
    size = 0
  if size < 1:
    raise ExportError(f'batch={batch!r}: give a positive integer or "dynamic".')
  return size


def input_spec(example: Any, batch: int | None) -> jax.ShapeDtypeStruct:
  """The exported input: `example`'s shape and dtype with the batch axis set."""
  size = jax.export.symbolic_shape(BATCH_AXIS_NAME)[0] if batch is None else batch
  return jax.ShapeDtypeStruct((size, *np.shape(example)[1:]), np.asarray(example).dtype)


def fit_batch(x: np.ndarray, batch: int | None) -> np.ndarray:
  """`x` cut or repeated along its first axis to `batch` rows (unchanged for None)."""
  if batch is None:
    return x
  return np.resize(x, (batch, *x.shape[1:])).astype(x.dtype)


def stablehlo_bytes(fn: Callable[[Any], Any], spec: jax.ShapeDtypeStruct) -> bytes:
  """`fn` serialized by `jax.export` for inputs of `spec`."""
  try:
    return bytes(jax.export.export(jax.jit(fn))(spec).serialize())
  except Exception as error:  # pylint: disable=broad-except  (re-raised, named)
    raise ExportError(f'stablehlo: jax.export cannot express the model: '
                      f'{type(error).__name__}: {error}') from error


def _replay(jaxpr: Any, consts: Sequence[Any], *args: Any) -> list[Any]:
  """Evaluates `jaxpr` primitive by primitive, for jax2onnx to trace.

  jax2onnx then sees lax primitives only (its Flax plugins would replace linen
  modules and skip the folding interceptors). Calls are inlined; values computed from
  constants alone are computed now (folding, e.g., the norms' rsqrt); `pad` goes
  through `jnp.pad`, whose jax2onnx plugin handles a symbolic batch (its `lax.pad`
  lowering cannot stamp one, jax2onnx 0.13).
  """
  env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))

  def read(var: Any) -> Any:
    return var.val if isinstance(var, core.Literal) else env[var]

  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name, params = eqn.primitive.name, eqn.params
    inner = params.get('jaxpr', params.get('call_jaxpr'))
    if name in _CALLS and isinstance(inner, core.ClosedJaxpr):
      outs = _replay(inner.jaxpr, inner.consts, *ins)
    elif name == 'pad' and _plain_pad(params, ins[1]):
      widths = [(int(lo), int(hi)) for lo, hi, _ in params['padding_config']]
      outs = [jnp.pad(ins[0], widths, constant_values=float(ins[1]))]
    else:
      constant = not any(isinstance(x, jax.core.Tracer) for x in ins)
      with jax.ensure_compile_time_eval() if constant else contextlib.nullcontext():
        outs = eqn.primitive.bind(*ins, **params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def _plain_pad(params: dict[str, Any], value: Any) -> bool:
  """A pad `jnp.pad` can express: a known value, no interior or negative padding."""
  return not isinstance(value, jax.core.Tracer) and all(
      interior == 0 and lo >= 0 and hi >= 0 for lo, hi, interior in params['padding_config'])


def onnx_bytes(fn: Callable[[Any], Any], spec: jax.ShapeDtypeStruct) -> bytes:
  """`fn` converted by jax2onnx for inputs of `spec` (opset `ONNX_OPSET`)."""
  import jax2onnx  # pylint: disable=import-outside-toplevel  (optional extra)
  # jax2onnx warns at length about its plugins for libraries this project lacks.
  logging.getLogger('jax2onnx').setLevel(logging.ERROR)
  try:
    closed = jax.make_jaxpr(fn)(spec)
    model = jax2onnx.to_onnx(lambda x: _replay(closed.jaxpr, closed.consts, x)[0],
                             [spec], model_name='model', opset=ONNX_OPSET,
                             input_names=['input'], output_names=['output'])
  except Exception as error:  # pylint: disable=broad-except  (re-raised, named)
    raise ExportError(f'onnx: jax2onnx {importlib.metadata.version("jax2onnx")} cannot '
                      f'express the model: {type(error).__name__}: {error}') from error
  return model.SerializeToString()


def load(directory: str, fmt: str) -> Runner:
  """The artifact of format `fmt` in `directory` as a function of a numpy batch."""
  path = os.path.join(directory, FILES[fmt])
  if fmt == 'stablehlo':
    with open(path, 'rb') as f:
      call = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
    return lambda x: np.asarray(call(x))
  import onnxruntime  # pylint: disable=import-outside-toplevel  (optional extra)
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  return lambda x: session.run(None, {name: x})[0]


@contextlib.contextmanager
def atomic_directory(final: str) -> Iterator[str]:
  """A temporary directory beside `final` that replaces it if the block succeeds.

  On any error the temporary directory is deleted and `final` is left as it was.
  """
  final = os.path.abspath(final)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(final)}.tmp-',
                         dir=os.path.dirname(final))
  os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would hide the artifacts from other users.
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = tmp + '.old'
  if os.path.exists(final):
    os.rename(final, old)
  os.rename(tmp, final)
  shutil.rmtree(old, ignore_errors=True)


def max_difference(expected: np.ndarray, actual: np.ndarray, what: str) -> float:
  """Largest absolute difference; ExportError beyond float rounding."""
  difference = float(np.max(np.abs(np.asarray(actual, np.float32) - expected)))
  limit = RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
  if not difference <= limit:
    raise ExportError(f'{what} differs from the model by {difference:.3g} '
                      f'(more than float rounding, {limit:.3g}).')
  return difference


def write_model(apply_fn: Callable[[Any, Any], Any], variables: Any, example: np.ndarray,
                directory: str, formats: tuple[str, ...], batch: int | None,
                fold: bool = True) -> tuple[dict[str, Any], dict[str, Runner], Any]:
  """Writes the artifacts of `formats` into `directory` and checks them on `example`.

  Returns:
    The manifest fields, the reloaded artifacts by format, the exported variables.
  """
  example = np.asarray(example)
  spec = input_spec(example, batch)
  found = (folding.find_foldable(apply_fn, variables, example[:1]) if fold
           else folding.Foldable((), {}))
  folded = folding.fold_batch_norm(variables, found.pairs)
  inference = folding.folded_apply(apply_fn, found.pairs)
  fn = lambda x: inference(folded, x)
  writers = {'stablehlo': stablehlo_bytes, 'onnx': onnx_bytes}
  for fmt in formats:
    data = writers[fmt](fn, spec)
    with open(os.path.join(directory, FILES[fmt]), 'wb') as f:
      f.write(data)
  runners = {fmt: load(directory, fmt) for fmt in formats}
  x = fit_batch(example, batch)
  reference = np.asarray(apply_fn(variables, x), np.float32)
  differences = {fmt: max_difference(reference, run(x), f'{FILES[fmt]} on the example')
                 for fmt, run in runners.items()}
  info = {
      'files': {fmt: FILES[fmt] for fmt in formats},
      'input': {'shape': [batch, *spec.shape[1:]], 'dtype': str(spec.dtype),
                'batch': batch or 'dynamic'},
      'output': {'shape': [batch, *reference.shape[1:]], 'dtype': 'float32'},
      'batch_norm': {'folded': {p.norm: p.layer for p in found.pairs},
                     'kept': dict(found.kept)},
      'weights': folding.count_weights(folded),
      'max_abs_difference_on_example': differences,
      'versions': _versions(formats),
  }
  if 'onnx' in formats:
    info['onnx_opset'] = ONNX_OPSET
  return info, runners, folded


def _versions(formats: tuple[str, ...]) -> dict[str, str]:
  names = ['jax', 'jaxlib', 'flax'] + (['jax2onnx', 'onnx', 'onnxruntime']
                                       if 'onnx' in formats else [])
  return {name: importlib.metadata.version(name) for name in names}


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
  with open(os.path.join(directory, workdir_lib.MANIFEST_FILE), 'w') as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write('\n')


def export(model_fn: nn.Module | Callable[[Any, Any], Any], variables: Any,
           example_input: Any, directory: str, *, formats: Sequence[str] = FORMATS,
           batch: str | int = 'dynamic', fold_batch_norm: bool = True,
           metadata: dict[str, Any] | None = None) -> dict[str, Any]:
  """Exports a model for inference into `directory` (replaced only on success).

  Args:
    model_fn: a linen module (its `apply(variables, x)`) or any function
      `apply(variables, x)` returning the outputs for a batch `x`, in inference mode
      (bind keyword arguments first, e.g. `functools.partial(model.apply, train=False)`).
    variables: its variables.
    example_input: a batch of real inputs; the artifacts take its shape and dtype
      (batch axis first) and are checked against `model_fn` on it.
    directory: where the artifacts and `manifest.json` go.
    formats: any of `FORMATS`.
    batch: 'dynamic' (a symbolic batch dimension) or a fixed batch size.
    fold_batch_norm: fold each norm that follows a conv or dense layer into it.
    metadata: fields added to the manifest (e.g. preprocessing, class names).

  Returns:
    The manifest.

  Raises:
    ExportError: an unknown format or batch, missing ONNX extras, a model an
      exporter cannot express, or artifacts whose outputs differ from the model's.
  """
  formats, batch = parse_formats(formats), parse_batch(batch)
  apply_fn = model_fn.apply if isinstance(model_fn, nn.Module) else model_fn
  with atomic_directory(directory) as tmp:
    info, _, _ = write_model(apply_fn, variables, example_input, tmp, formats, batch,
                             fold_batch_norm)
    manifest = {**(metadata or {}), **info}
    write_manifest(tmp, manifest)
  return manifest
