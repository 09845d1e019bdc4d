"""Every benchmark runs at tiny sizes and reports ratios (no timing is asserted)."""

import json
import math
import subprocess
import sys

import pytest

from benchmarks import suite
from tests.test_main import ROOT

# Entry names and targets of each benchmark at smoke sizes.
SMOKE_ENTRIES = {
    'train_step': [('train_step/resnet8/b8/dense', None),
                   ('train_step/resnet8/b8/cci_dynamic', 1.10),
                   ('train_step/resnet8/b8/cci_fixed_mask', 1.05),
                   ('train_step/resnet8/b8/c2s2_real', 1.05),
                   ('train_step/resnet8/b8/c2s2_binary', 1.05)],
    'mask_compute': [('mask_compute/resnet8/2of8', 0.05)],
    'input_pipeline': [('input_pipeline/synthetic/b8', 1 / 3)],
    'compact_forward': [('compact_forward/resnet8_half_conv1/b2', None)],
    'packed_forward': [('packed_forward/resnet8/b2', None)],
    'flax_reference': [('flax_reference/resnet8/b8', 1.05)],
    'vgg_conv': [('vgg_conv/vgg16/b2/auto_vs_xla', 1 / 3)],
    'pytorch_reference': [('pytorch_reference/resnet8/b8', None)],
    'onnx_runtime': [('onnx_runtime/resnet8_half_conv1/b2/ort_compact_vs_dense', None),
                     ('onnx_runtime/resnet8_half_conv1/b2/ort_vs_xla_compact', None),
                     ('onnx_runtime/resnet8_half_conv1/b2/ort_vs_xla_dense', None)],
}


def test_every_benchmark_is_covered():
  assert set(SMOKE_ENTRIES) == set(suite.NAMES)


def test_cli_runs_a_selection_and_writes_json(tmp_path):
  out = tmp_path / 'latest.json'
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks', '--smoke',
       '--only=pytorch_reference,mask_compute', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.load(open(out))
  names = ['mask_compute/resnet8/2of8', 'pytorch_reference/resnet8/b8']  # Registry order.
  assert [e['name'] for e in saved['entries']] == names
  assert saved['smoke'] and saved['machine']['platform']
  assert set(saved['wall_seconds']) == {'mask_compute', 'pytorch_reference', 'total'}
  for e in saved['entries']:
    assert {'seconds', 'baseline', 'baseline_seconds', 'ratio', 'target',
            'passed'} <= set(e)
    assert e['name'] in result.stdout and f'{e["ratio"]:.3f}' in result.stdout


def test_a_benchmark_without_its_optional_modules_is_skipped(monkeypatch):
  monkeypatch.setattr(suite.importlib.util, 'find_spec', lambda module: None)
  logged = []
  result = suite.run(['onnx_runtime'], smoke=True, log=logged.append)
  assert result['entries'] == [] and list(result['skipped']) == ['onnx_runtime']
  assert 'jax2onnx, onnxruntime' in result['skipped']['onnx_runtime']
  assert logged == [f'skipped onnx_runtime: {result["skipped"]["onnx_runtime"]}']


def test_select_keeps_registry_order_and_rejects_unknown_names():
  assert suite.select(None) == list(suite.NAMES)
  assert suite.select(['vgg_conv', 'train_step']) == ['train_step', 'vgg_conv']
  with pytest.raises(ValueError, match='Unknown benchmark.*nope.*known: train_step'):
    suite.select(['train_step', 'nope'])


# onnx_runtime's smoke run spends about 30 s importing jax2onnx's plugins: slow.
@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n == 'onnx_runtime' else n
    for n in suite.NAMES])
def test_benchmark_smoke(name, capsys):
  for module in suite.missing(name):  # Optional extras (requirements-export.txt).
    pytest.importorskip(module)
  entries = suite.measure(name, smoke=True)
  print(suite.table(entries))
  printed = capsys.readouterr().out
  assert [(e['name'], e['target']) for e in entries] == SMOKE_ENTRIES[name]
  for e in entries:
    assert e['seconds'] > 0 and e['baseline_seconds'] > 0
    assert math.isfinite(e['ratio']) and e['ratio'] > 0
    assert e['passed'] is (None if e['target'] is None else e['ratio'] <= e['target'])
    assert e['name'] in printed and f'{e["ratio"]:.3f}' in printed
  json.dumps(entries)  # Serialisable as written to latest.json.


def test_foreign_models_smoke():
  # One model keeps the default suite short; tests/foreign covers VGG-style models.
  result = subprocess.run([sys.executable, '-m', 'benchmarks.foreign_models', '--smoke',
                           '--models=resnet18'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resnet18 at 32x32' in result.stdout
  assert result.stdout.count('masked vs compact') == 1
  assert result.stdout.count('x fewer') == 2 and result.stdout.count('x faster') == 1
