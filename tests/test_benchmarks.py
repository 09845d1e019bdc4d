"""Every benchmark runs at tiny sizes and reports ratios (no timing is asserted)."""

import json
import math
import subprocess
import sys
import types

import pytest

from benchmarks import pytorch_reference, suite
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
    'imagenet_pipeline': [('imagenet_pipeline/1_worker/b4', None),
                          ('imagenet_pipeline/2_workers/b4', 1 / 3),
                          ('imagenet_pipeline/2_vs_1_workers/b4', 1 / 1.7)],
    'compact_forward': [('compact_forward/resnet8_half_conv1/b2', None)],
    'packed_forward': [('packed_forward/resnet8/b2', None)],
    'flax_reference': [('flax_reference/resnet8/b8', 1.05)],
    'vgg_conv': [('vgg_conv/vgg16/b2/auto_vs_xla', 1 / 3)],
    'pytorch_reference': [('pytorch_reference/resnet8/b8', None),
                          ('matmul_peak/resnet8/b8', None)],
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
  names = ['mask_compute/resnet8/2of8', 'pytorch_reference/resnet8/b8',
           'matmul_peak/resnet8/b8']  # Registry order.
  assert [e['name'] for e in saved['entries']] == names
  assert saved['smoke'] and saved['machine']['platform']
  machine = saved['machine']
  assert {'revision', 'date', 'cpu', 'cpu_count', 'jax', 'jaxlib'} <= set(machine)
  assert machine['cpu_count'] >= 1 and machine['date'].startswith('20')
  assert set(saved['wall_seconds']) == {'mask_compute', 'pytorch_reference', 'total'}
  for e in saved['entries']:
    assert {'seconds', 'baseline', 'baseline_seconds', 'ratio', 'target',
            'passed'} <= set(e)
    assert e['name'] in result.stdout
    assert e['ratio'] is None or f'{e["ratio"]:.3f}' in result.stdout


def test_an_entry_passes_at_or_below_its_target(monkeypatch):
  timed = {'seconds': 1.0, 'baseline_seconds': 1.0}
  entries = [{'name': 'fast', 'ratio': 0.9, 'target': 1.0, **timed},
             {'name': 'at', 'ratio': 1.0, 'target': 1.0, **timed},
             {'name': 'slow', 'ratio': 1.1, 'target': 1.0, **timed},
             {'name': 'reported', 'ratio': 5.0, 'target': None, **timed}]
  fake = types.SimpleNamespace(measure=lambda smoke: [dict(e) for e in entries])
  monkeypatch.setattr(suite.importlib, 'import_module', lambda name: fake)
  passed = {e['name']: e['passed'] for e in suite.measure('fake', smoke=True)}
  assert passed == {'fast': True, 'at': True, 'slow': False, 'reported': None}
  assert suite.table(suite.measure('fake', smoke=True)).splitlines()[3].endswith('NO')


def test_pytorch_reference_without_pytorch_says_so(monkeypatch):
  find_spec = pytorch_reference.importlib.util.find_spec
  monkeypatch.setattr(pytorch_reference.importlib.util, 'find_spec',
                      lambda name: None if name == 'torch' else find_spec(name))
  entries = suite.measure('pytorch_reference', smoke=True)
  assert entries[0]['baseline'] == pytorch_reference.NOT_INSTALLED
  assert entries[0]['ratio'] is None and entries[0]['passed'] is None
  assert 'not installed' in suite.table(entries)
  assert entries[1]['peak_source'] in ('xla', 'numpy')  # The peak needs no PyTorch.
  assert 0 < entries[1]['fraction_of_peak'] < 1.5


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
    assert e['seconds'] > 0
    if e['ratio'] is None:  # Only a baseline that cannot run here says why.
      assert e['baseline'] == pytorch_reference.NOT_INSTALLED, e
      assert 'not installed' in printed
      continue
    assert e['baseline_seconds'] > 0
    assert math.isfinite(e['ratio']) and e['ratio'] > 0
    assert e['name'] in printed and f'{e["ratio"]:.3f}' in printed
  json.dumps(entries)  # Serialisable as written to latest.json.


def test_foreign_models_smoke(tmp_path):
  # One model keeps the default suite short; tests/foreign covers VGG-style models.
  out = tmp_path / 'foreign.json'
  result = subprocess.run([sys.executable, '-m', 'benchmarks.foreign_models', '--smoke',
                           '--models=resnet18', f'--out={out}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resnet18 at 32x32' in result.stdout
  assert result.stdout.count('masked vs compact') == 1
  assert result.stdout.count('x fewer') == 2 and result.stdout.count('x faster') == 1
  saved = json.loads(out.read_text())
  assert [m['name'] for m in saved['models']] == ['resnet18']
  assert saved['models'][0]['macs_compact'] < saved['models'][0]['macs']
  assert saved['machine']['revision'] and saved['settings']['smoke']
