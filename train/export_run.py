"""`python main.py --mode=export`: a finished run's final model as inference artifacts.

The model exported is the one `--mode=eval` evaluates: C2S2's compact widths (from
the workdir's widths.json), CCI's masked weights (`forward_params`), batch norms
folded into the convs before them. Besides the artifacts of `train/export.py`, the
export directory (`WORKDIR/export`) gets `manifest.json` with the preprocessing,
classes, widths, size and provenance, and the test top-1 of every artifact, measured
by running it over the whole test split beside the in-process model; a CCI run also
gets `cci_packed.npz` (docs/export.md), checked to unpack to the exported kernels.
"""

import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

import cci
from train import data, experiment, export, folding, loop, provenance, report, steps
from train import workdir as workdir_lib
from train.models import stats



def check_finished(workdir: str) -> dict[str, Any]:
  """The run's summary; ExportError if the workdir holds no finished run."""
  summary = workdir_lib.read_record(os.path.join(workdir, workdir_lib.SUMMARY_FILE))
  if summary is None:  # Missing, or damaged (then moved aside with a warning).
    raise export.ExportError(
        f'{workdir} holds no finished run (no intact {workdir_lib.SUMMARY_FILE}): rerun its '
        'training command to finish it, then export.')
  return summary


def _normalize(exp: experiment.Experiment, images: np.ndarray) -> np.ndarray:
  """What the eval step feeds the model: standardised pixels in the model's dtype."""
  return np.asarray(steps.normalize(images, exp.dataset.mean, exp.dataset.std,
                                    exp.model.dtype))


def evaluate(exp: experiment.Experiment, apply_fn: Any, variables: Any,
             runners: dict[str, export.Runner], batch: int | None) -> dict[str, Any]:
  """Test top-1 of each artifact and of the in-process model, and their largest
  output difference, over the whole test split."""
  size = batch or exp.config.eval_batch_size
  forward = jax.jit(apply_fn)
  correct = {name: 0.0 for name in ('in_process', *runners)}
  difference = {fmt: 0.0 for fmt in runners}
  count = 0.0
  for item in data.eval_batches(exp.dataset.test, batch_size=size):
    x = _normalize(exp, item['image'])
    outputs = {'in_process': np.asarray(forward(variables, x), np.float32)}
    for fmt, run in runners.items():
      outputs[fmt] = run(x)
      difference[fmt] = max(difference[fmt], export.max_difference(
          outputs['in_process'], outputs[fmt], f'{export.FILES[fmt]} on the test split'))
    for name, logits in outputs.items():
      correct[name] += float(np.sum((logits.argmax(-1) == item['label']) * item['mask']))
    count += float(item['mask'].sum())
  return {'images': int(count),
          'top1': {fmt: correct[fmt] / count for fmt in runners},
          'top1_in_process': correct['in_process'] / count,
          'max_abs_difference': difference}


def _layer(tree: Any, path: str) -> dict[str, Any]:
  for key in path.split('/'):
    tree = tree[key]
  return tree


def pack_cci(exp: experiment.Experiment, state: Any, folded: Any) -> dict[str, np.ndarray]:
  """The packed arrays of every grouped kernel of the exported (folded) model.

  Raises:
    ExportError: a packed kernel does not unpack to the exported kernel exactly.
  """
  spec = exp.method.sparsity
  masks = report.kernel_masks(state.params, state.opt_state, spec)
  shape = (1, *exp.dataset.image_shape)
  layers = {s.path: s for s in stats.layer_stats(exp.model, jax.device_get(
      state.variables), shape)}
  arrays, table = {}, []
  for kernel_path in spec.grouped:
    path = kernel_path[:-len('/kernel')]
    kernel = np.asarray(_layer(folded['params'], path)['kernel'])
    values, indices = cci.pack(kernel, masks[path], spec.group_size)
    values, indices = np.asarray(values), np.asarray(indices)
    unpacked = np.asarray(cci.unpack(values, indices, spec.group_size, spec.keep))
    if not np.array_equal(unpacked, kernel):
      raise export.ExportError(f'{workdir_lib.PACKED_FILE}: {path} does not unpack to the '
                               'exported kernel exactly.')
    arrays[f'{path}/values'], arrays[f'{path}/indices'] = values, indices
    bias = _folded_bias(folded, path)
    if bias is not None:
      arrays[f'{path}/bias'] = bias
    layer = layers[path]
    table.append({'path': path, 'kind': layer.kind, 'kernel_shape': list(kernel.shape),
                  'packed_shape': list(values.shape), 'input_shape': list(layer.input_shape),
                  'output_shape': list(layer.output_shape), 'bias': bias is not None})
  arrays['group_size'] = np.asarray(spec.group_size)
  arrays['keep'] = np.asarray(spec.keep)
  arrays['layers'] = np.asarray(json.dumps(table))
  return arrays


def _folded_bias(folded: Any, path: str) -> np.ndarray | None:
  """The bias the exported layer at `path` adds, if any."""
  for collection in ('params', folding.FOLDED_BIAS):
    try:
      return np.asarray(_layer(folded[collection], path)['bias'])
    except KeyError:
      continue
  return None


def _method(config: ml_collections.ConfigDict) -> str:
  pruning = config.channel_pruning.method
  if pruning != 'none':
    return pruning
  return 'dense' if config.sparsity.method == 'none' else (
      f'{config.sparsity.pattern} {config.sparsity.method}')


def export_workdir(config: ml_collections.ConfigDict, workdir: str,
                   formats: list[str] | tuple[str, ...] = export.FORMATS,
                   batch: str | int = 'dynamic', directory: str = '') -> dict[str, Any]:
  """Exports the final model of the finished run in `workdir`.

  Args:
    config: the run's config (`saved_config.load_config`).
    workdir: the run's directory.
    formats: any of `export.FORMATS`.
    batch: 'dynamic' or a fixed batch size.
    directory: where to write (default `WORKDIR/export`), replaced only on success.

  Returns:
    The manifest (also written to `manifest.json`).

  Raises:
    ExportError: no finished run, an unknown format or batch, missing ONNX extras,
      a model an exporter cannot express, or artifacts that disagree with the model.
  """
  formats, batch = export.parse_formats(formats), export.parse_batch(batch)
  summary = check_finished(workdir)
  exp, state, step = loop.restore_latest(config, workdir)
  variables = jax.device_get({
      'params': exp.method.forward_params(state.params, state.opt_state),
      'batch_stats': state.batch_stats})
  apply_fn = functools.partial(exp.model.apply, train=False)
  first = next(data.eval_batches(exp.dataset.test, batch_size=min(
      8, len(exp.dataset.test))))
  directory = directory or os.path.join(workdir, workdir_lib.EXPORT_DIR)
  with export.atomic_directory(directory) as tmp:
    info, runners, folded = export.write_model(
        apply_fn, variables, _normalize(exp, first['image']), tmp, formats, batch)
    test = evaluate(exp, apply_fn, variables, runners, batch)
    manifest = {
        **info,
        'model': config.model.name,
        'method': _method(config),
        'num_classes': exp.dataset.num_classes,
        'class_names': list(exp.dataset.class_names),
        'preprocessing': {
            'image_size': list(exp.dataset.image_shape[:2]),
            'channels': exp.dataset.image_shape[2], 'layout': 'NHWC',
            'mean': exp.dataset.mean.tolist(), 'std': exp.dataset.std.tolist(),
            'formula': 'input = (pixel - mean) / std, pixels in 0..255, per channel'},
        'widths': exp.widths,
        **experiment.model_size(exp),
        **{key: summary[key] for key in ('macs_kept', 'density') if key in summary},
        'test': test,
        'source': {'workdir': os.path.abspath(workdir), 'step': step,
                   'run_revision': summary.get('revision', 'unknown'),
                   'run_top1': summary['top1']},
        'revision': provenance.revision(),
    }
    if exp.method.sparsity is not None and exp.method.sparsity.pattern == 'cci':
      np.savez(os.path.join(tmp, workdir_lib.PACKED_FILE), **pack_cci(exp, state, folded))
      manifest['files']['cci_packed'] = workdir_lib.PACKED_FILE
    export.write_manifest(tmp, manifest)
  logging.info('Exported %s to %s: test top-1 %s (in process %.4f).', workdir, directory,
               test['top1'], test['top1_in_process'])
  return manifest
