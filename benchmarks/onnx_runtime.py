"""ONNX Runtime against XLA on CPU: a compact C2S2 ResNet-20 and the dense one.

  pip install -r requirements-export.txt
  python -m benchmarks --only=onnx_runtime

The compact model is compact_forward's (half the channels of every block's conv1, the
groups C2S2 selects in a CIFAR ResNet), both on random weights. Each model is exported
by train/export.py (batch norms folded, dynamic batch) and run from its artifacts: the
ONNX model by ONNX Runtime (CPU execution provider, its default threads), the StableHLO
one by XLA (jitted), all four timed interleaved per batch. Entries, without targets:
ORT compact against ORT dense (does the MAC reduction become latency in ORT?), and ORT
against XLA for each model.
"""

import functools
import os
import tempfile

import numpy as np

from benchmarks import common, compact_forward
from train import export, models, timing
from train.models import stats

REQUIRES = export.ONNX_MODULES  # Optional extras: requirements-export.txt.
FULL = ('resnet20', (1, 128), 10)  # model, batches, repeats
SMOKE = ('resnet8', (2,), 2)
IMAGE_SIZE = 32


def exported_runners(model_name: str, directory: str
                     ) -> tuple[dict[str, export.Runner], dict[str, int]]:
  """'{format}_{dense|compact}' -> the artifact as a function; MACs per model."""
  runners, macs = {}, {}
  shape = (1, IMAGE_SIZE, IMAGE_SIZE, 3)
  for kind, widths in (('dense', None),
                       ('compact', compact_forward.half_conv1(model_name))):
    model = models.build_model(model_name, 10, widths=widths)
    variables = common.init_variables(model, IMAGE_SIZE)
    macs[kind] = stats.total_macs(stats.layer_stats(model, variables, shape))
    target = os.path.join(directory, kind)
    export.export(functools.partial(model.apply, train=False), variables,
                  np.zeros(shape, np.float32), target)
    for fmt in export.FORMATS:
      runners[f'{fmt}_{kind}'] = export.load(target, fmt)
  return runners, macs


def measure(smoke: bool) -> list[common.Entry]:
  """Per batch: ORT compact vs ORT dense, ORT vs XLA (compact, dense)."""
  model_name, batches, repeats = SMOKE if smoke else FULL
  with tempfile.TemporaryDirectory() as directory:
    runners, macs = exported_runners(model_name, directory)
  entries = []
  for batch in batches:
    x = np.random.default_rng(1).normal(size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3))
    x = x.astype(np.float32)
    seconds = timing.interleaved(
        {name: functools.partial(run, x) for name, run in runners.items()}, repeats)
    name = f'onnx_runtime/{model_name}_half_conv1/b{batch}'
    entries += [
        common.entry(f'{name}/ort_compact_vs_dense', seconds['onnx_compact'],
                     f'{model_name} dense, ORT', seconds['onnx_dense'], None,
                     macs=macs['compact'], macs_dense=macs['dense']),
        common.entry(f'{name}/ort_vs_xla_compact', seconds['onnx_compact'],
                     'the same model, XLA', seconds['stablehlo_compact'], None),
        common.entry(f'{name}/ort_vs_xla_dense', seconds['onnx_dense'],
                     'the same model, XLA', seconds['stablehlo_dense'], None)]
  return entries
