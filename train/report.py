"""Per-layer sparsity and efficiency reports of a trained state (summary, --mode=efficiency)."""

import functools
from typing import Any

import jax
import ml_collections
import numpy as np

import cci
from cci import efficiency
from train import model_setup, models, timing
from train.models import stats



def kernel_masks(params: Any, opt_state: Any,
                 spec: cci.SparsitySpec | None) -> dict[str, np.ndarray]:
  """Layer path -> kept-weight mask of its kernel: the CCI mask, else the nonzeros."""
  flat = {cci.masks.path_of(p): np.asarray(w) for p, w in
          jax.tree_util.tree_leaves_with_path(params)}
  found = {}
  if spec is not None:
    state = cci.find_state(opt_state)
    found = {cci.masks.path_of(p): np.asarray(m) for p, m in
             jax.tree_util.tree_leaves_with_path(state.masks) if np.ndim(m)}
  return {path[:-len('/kernel')]: found.get(path, flat[path] != 0)
          for path in flat if path.endswith('/kernel')}


def layer_reports(model: Any, variables: Any, input_shape: tuple[int, ...],
                  masks: dict[str, np.ndarray], grouped: set[str], group_size: int,
                  pes: int) -> list[efficiency.LayerEfficiency]:
  """Accelerator-model rows of every conv and dense layer, in call order."""
  rows = []
  for layer in stats.layer_stats(model, variables, (1, *input_shape)):
    positions = layer.macs // int(np.prod(layer.kernel_shape))  # Input ones if transposed.
    rows.append(efficiency.layer_efficiency(
        layer.path, masks[layer.path], positions, group_size,
        layer.path + '/kernel' in grouped, pes))
  return rows


def sparsity_summary(rows: list[efficiency.LayerEfficiency], group_size: int,
                     fmt: str = 'cci') -> dict[str, Any]:
  """The sparsity fields of summary.json, and the per-layer table for layers.json.

  Index bits are those of the storage format `fmt`: 'cci' (log2 g per kept weight of
  a grouped kernel) or 'csr' (column index per kept weight plus row pointers, for
  unstructured masks).
  """
  total = efficiency.totals(rows)

  def index_bits(r: efficiency.LayerEfficiency) -> int:
    if fmt == 'cci' or not r.grouped:
      return efficiency.index_bits(r, group_size)
    return efficiency.storage_bits(r, group_size, fmt) - r.kept * efficiency.VALUE_BITS

  table = [{
      'path': r.path, 'grouped': r.grouped, 'kernel_shape': list(r.kernel_shape),
      'density': r.kept / r.weights, 'macs_dense': r.macs_dense, 'macs_kept': r.macs_kept,
      'value_bits': r.kept * efficiency.VALUE_BITS, 'index_bits': index_bits(r),
  } for r in rows]
  return {
      'density': total['density'],
      'macs_kept': total['macs_kept'],
      'value_bits': sum(t['value_bits'] for t in table),
      'index_bits': sum(t['index_bits'] for t in table),
      'projected_speedup': total['speedup'],
      'utilisation': total['utilisation'],
  }, table


def _rows(exp: Any, variables: Any, masks: dict[str, np.ndarray], pes: int
          ) -> list[efficiency.LayerEfficiency]:
  spec = exp.method.sparsity
  grouped = set(spec.grouped) if spec else set()
  return layer_reports(exp.model, variables, exp.dataset.image_shape, masks,
                       grouped, _group_size(exp), pes)


def _group_size(exp: Any) -> int:
  spec = exp.method.sparsity
  return spec.group_size if spec else exp.config.sparsity.group_size


def sparsity_report(exp: Any, state: Any, pes: int = 256) -> tuple[dict[str, Any], list]:
  """Summary fields and the per-layer table of a CCI-trained state."""
  masks = kernel_masks(state.params, state.opt_state, exp.method.sparsity)
  rows = _rows(exp, state.variables, masks, pes)
  spec = exp.method.sparsity
  return sparsity_summary(rows, spec.group_size,
                          'csr' if spec.pattern == 'unstructured' else 'cci')


def efficiency_report(exp: Any, state: Any, reference: Any | None,
                      pes: int) -> dict[str, Any]:
  """Dense, this model's masks, and unstructured masks at the same per-layer density.

  Args:
    exp: the experiment of the trained state.
    state: the trained state.
    reference: params whose magnitudes choose the unstructured masks (a dense run of
      the same model); None uses the state's own weights.
    pes: processing elements of the modelled accelerator.
  """
  masks = kernel_masks(state.params, state.opt_state, exp.method.sparsity)
  spec = exp.method.sparsity
  unstructured = spec is not None and spec.pattern == 'unstructured'
  own = 'cci' if spec is not None and not unstructured else 'model'
  weights = {cci.masks.path_of(p)[:-len('/kernel')]: np.asarray(w) for p, w in
             jax.tree_util.tree_leaves_with_path(reference or state.params)
             if cci.masks.path_of(p).endswith('/kernel')}
  variants = {
      'dense': {p: np.ones_like(m) for p, m in masks.items()},
      own: masks,
      'unstructured': {p: efficiency.unstructured_mask(weights[p], m.mean())
                       for p, m in masks.items()},
  }
  group_size = _group_size(exp)
  result = {'pes': pes, 'group_size': group_size, 'methods': {}}
  for name, variant in variants.items():
    rows = _rows(exp, state.variables, variant, pes)
    fmt = {'dense': 'dense', 'unstructured': 'csr',
           'model': 'csr' if unstructured else 'cci'}.get(name, 'cci')
    result['methods'][name] = {
        **efficiency.totals(rows),
        'storage_bits': sum(efficiency.storage_bits(r, group_size, fmt) for r in rows),
        'storage_format': fmt,
        'layers': [{'path': r.path, 'density': r.kept / r.weights, 'cycles': r.cycles,
                    'cycles_dense': r.cycles_dense, 'utilisation': r.utilisation}
                   for r in rows],
    }
  return result


def format_efficiency(result: dict[str, Any]) -> str:
  """The whole-model rows of `efficiency_report` as a text table."""
  lines = [f'accelerator model: {result["pes"]} PEs, groups of {result["group_size"]}',
           f'{"method":<13}{"density":>8}{"MACs (M)":>10}{"cycles (k)":>12}'
           f'{"util.":>7}{"speedup":>9}{"storage (Mbit)":>16}  format']
  for name, m in result['methods'].items():
    lines.append(f'{name:<13}{m["density"]:>8.3f}{m["macs_kept"] / 1e6:>10.2f}'
                 f'{m["cycles"] / 1e3:>12.1f}{m["utilisation"]:>7.1%}{m["speedup"]:>9.2f}'
                 f'{m["storage_bits"] / 1e6:>16.3f}  {m["storage_format"]}')
  return '\n'.join(lines)


def forward_latency(named_models: dict[str, Any], image_shape: tuple[int, ...],
                    batch_size: int, repeats: int = 10) -> dict[str, float]:
  """Median seconds of a jitted inference forward pass of each model, interleaved."""
  calls = {}
  for name, model in named_models.items():
    x = jax.random.normal(jax.random.key(1), (batch_size, *image_shape), model.dtype)
    variables = model.init(jax.random.key(0), x[:1], train=False)
    forward = jax.jit(functools.partial(model.apply, train=False))
    calls[name] = functools.partial(forward, variables, x)
  return timing.interleaved(calls, repeats)


def channel_report(exp: Any, original: ml_collections.ConfigDict,
                   batch_size: int) -> dict[str, Any]:
  """Kept channels per conv and latency of the compact model against the original.

  Args:
    exp: the compact model's experiment.
    original: the config of the run before channel selection (its widths are the
      original model's).
    batch_size: batch of the latency measurement.
  """
  widths = model_setup.config_widths(original, exp.dataset.num_classes)
  original_model = models.build_model(
      original.model.name, exp.dataset.num_classes, widths=widths, dtype=exp.model.dtype,
      shortcut=original.model.shortcut)
  seconds = forward_latency({'compact': exp.model, 'original': original_model},
                            exp.dataset.image_shape, batch_size)
  shape = (1, *exp.dataset.image_shape)
  variables = jax.eval_shape(functools.partial(original_model.init, train=False),
                             jax.random.key(0), jax.ShapeDtypeStruct(shape, exp.model.dtype))
  return {
      'params_original': stats.count_params(variables['params']),
      'macs_original': stats.total_macs(stats.layer_stats(original_model, variables, shape)),
      'channels': {k: {'kept': exp.widths[k], 'original': w} for k, w in widths.items()},
      'latency_batch': batch_size,
      'latency_ms_compact': 1e3 * seconds['compact'],
      'latency_ms_original': 1e3 * seconds['original'],
      'latency_speedup': seconds['original'] / seconds['compact'],
  }
