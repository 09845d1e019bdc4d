"""--mode=export on dense, CCI and C2S2 quickstart-style runs; the export API; bad input.

ONNX checks need the optional extras (requirements-export.txt); without them the
StableHLO checks still run.
"""

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cci
from tests import markdown_docs
from tests.test_main import run_main
from tests.train.test_c2s2_driver import c2s2_config
from tests.train.test_cci_training import cci_config
from train import dispatch, export, export_run, loop, saved_config, steps
from train import workdir as workdir_lib

HAS_ONNX = all(importlib.util.find_spec(m) for m in export.ONNX_MODULES)
FORMATS = export.FORMATS if HAS_ONNX else ('stablehlo',)


def train(config, workdir):
  dispatch.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def runs(tiny_dense_workdir, tmp_path_factory):
  """Finished dense, CCI (dynamic 2 of 8) and C2S2 (one unit: stage 1) runs."""
  new = lambda name: str(tmp_path_factory.mktemp(name))
  return {'dense': tiny_dense_workdir,
          'cci': train(cci_config('dynamic', ''), new('cci')),
          'c2s2': train(c2s2_config(tiny_dense_workdir, include='stage1'), new('c2s2'))}


@pytest.fixture(scope='module', params=['dense', 'cci', 'c2s2'])
def exported(request, runs):
  """A run's workdir, its export manifest and its summary."""
  workdir = runs[request.param]
  config = saved_config.load_config(workdir)
  manifest = export_run.export_workdir(config, workdir, FORMATS)
  return request.param, workdir, manifest, workdir_lib.read_json(
      os.path.join(workdir, workdir_lib.SUMMARY_FILE))


def in_process(workdir):
  """The run's eval model (unfolded, masked weights) and its normalised test split."""
  exp, state, _ = loop.restore_latest(saved_config.load_config(workdir), workdir)
  variables = {'params': exp.method.forward_params(state.params, state.opt_state),
               'batch_stats': state.batch_stats}
  images, labels = exp.dataset.test.get_batch(np.arange(len(exp.dataset.test)))
  x = np.asarray(steps.normalize(images, exp.dataset.mean, exp.dataset.std, jnp.float32))
  return exp, state, exp.model.apply(variables, x, train=False), x, labels


def test_exported_outputs_equal_the_model_on_the_test_split(exported):
  _, workdir, manifest, summary = exported
  _, _, logits, x, labels = in_process(workdir)
  directory = os.path.join(workdir, workdir_lib.EXPORT_DIR)
  for fmt in FORMATS:
    out = export.load(directory, fmt)(x)
    np.testing.assert_allclose(out, logits, atol=1e-4 * float(np.abs(logits).max()))
    top1 = float(np.mean(out.argmax(-1) == labels))
    assert manifest['test']['top1'][fmt] == pytest.approx(top1, abs=1e-9)
    assert top1 == pytest.approx(summary['top1'], abs=1e-6)
  assert manifest['test']['images'] == len(labels)
  assert manifest['batch_norm']['folded'] and not manifest['batch_norm']['kept']


def test_manifest_describes_the_run(exported):
  kind, workdir, manifest, summary = exported
  exp, _, _, _, _ = in_process(workdir)
  saved = json.load(open(os.path.join(workdir, 'export', 'manifest.json')))
  assert saved == json.loads(json.dumps(manifest))
  assert manifest['input']['shape'] == [None, 8, 8, 3]
  assert manifest['output']['shape'] == [None, exp.dataset.num_classes]
  assert manifest['preprocessing']['mean'] == exp.dataset.mean.tolist()
  assert manifest['preprocessing']['layout'] == 'NHWC'
  assert manifest['widths'] == json.load(open(os.path.join(workdir, 'widths.json')))
  assert manifest['macs'] == summary['macs' if kind != 'cci' else 'macs_dense']
  assert manifest['params'] == summary['params']
  assert manifest['source']['workdir'] == os.path.abspath(workdir)
  assert manifest['method'] == {'dense': 'dense', 'cci': 'cci dynamic',
                                'c2s2': 'c2s2'}[kind]
  assert re.fullmatch(r'[0-9a-f]{40}(-dirty)?|unknown', manifest['revision'])
  if kind == 'c2s2':  # The compact widths: fewer MACs than the original model.
    assert manifest['macs'] < summary['macs_original']
    assert manifest['widths']['stage1_block0/conv1'] < 16
  if kind == 'cci':
    assert manifest['macs_kept'] == summary['macs_kept'] < manifest['macs'] / 3
  assert ('cci_packed' in manifest['files']) == (kind == 'cci')


@pytest.mark.parametrize('exported', ['cci'], indirect=True)
def test_cci_packed_weights_unpack_to_the_folded_masked_kernels(exported):
  _, workdir, _, _ = exported
  _, state, _, _, _ = in_process(workdir)
  packed = np.load(os.path.join(workdir, 'export', workdir_lib.PACKED_FILE))
  g, k = int(packed['group_size']), int(packed['keep'])
  assert (g, k) == (8, 2)
  masks = cci.find_state(state.opt_state).masks
  layers = json.loads(str(packed['layers']))
  assert len(layers) == 7  # Every conv but the stem, and the head.
  for layer in layers:
    path = layer['path']
    values, indices = packed[f'{path}/values'], packed[f'{path}/indices']
    assert indices.dtype == np.uint8 and values.shape == indices.shape
    assert values.shape[-2] == layer['kernel_shape'][-2] * k // g
    grouped = indices.reshape(*indices.shape[:-2], -1, k, indices.shape[-1])
    assert np.all(np.diff(grouped.astype(int), axis=-2) > 0) and grouped.max() < g
    # The exported kernel, computed here from the checkpoint: masked, BN folded.
    node = lambda tree, p=path: functools.reduce(lambda t, key: t[key], p.split('/'), tree)
    kernel = np.asarray(node(state.params)['kernel']) * np.asarray(node(masks)['kernel'])
    if path != 'head':
      norm = path.replace('conv', 'bn')
      stats = node(state.batch_stats, norm)
      factor = np.asarray(node(state.params, norm)['scale'] * jax.lax.rsqrt(
          stats['var'] + 1e-5))
      kernel = kernel * factor
      np.testing.assert_allclose(
          packed[f'{path}/bias'], node(state.params, norm)['bias'] - stats['mean'] * factor,
          rtol=1e-6, atol=1e-6)
    unpacked = np.asarray(cci.unpack(values, indices, g, k))
    np.testing.assert_allclose(unpacked, kernel, rtol=1e-6, atol=1e-7)
    assert np.array_equal(unpacked != 0, kernel != 0)


def test_documented_snippet_runs_the_stablehlo_export_with_jax_alone(runs, tmp_path):
  """docs/export.md's code that loads the StableHLO export with jax alone, as written."""
  workdir = runs['dense']
  if not os.path.exists(os.path.join(workdir, 'export', 'manifest.json')):
    export_run.export_workdir(saved_config.load_config(workdir), workdir, ['stablehlo'])
  code = markdown_docs.marked_block('docs/export.md', 'stablehlo snippet').replace(
      '/tmp/quickstart', workdir)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, '-c', code + '\nprint(logits.shape)'],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == '(5, 10)'
  assert 'import train' not in code and 'from train' not in code


def test_export_api_on_a_users_model_and_pure_function(tmp_path):
  class Net(nn.Module):  # A user's model: conv, norm, pool, dense.
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
      return nn.Dense(3)(x.mean((1, 2)))

  x = np.asarray(jax.random.normal(jax.random.key(0), (6, 5, 5, 2)))
  net = Net()
  variables = net.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda a: a + 0.3, variables)  # Nontrivial statistics.
  manifest = export.export(net, variables, x, str(tmp_path / 'net'), formats=FORMATS,
                           batch=6, metadata={'name': 'net'})
  assert manifest['name'] == 'net' and manifest['input']['shape'] == [6, 5, 5, 2]
  assert manifest['batch_norm']['folded'] == {'BatchNorm_0': 'Conv_0'}
  for fmt in FORMATS:
    np.testing.assert_allclose(export.load(str(tmp_path / 'net'), fmt)(x),
                               net.apply(variables, x), atol=1e-5)
  pure = lambda v, x: jnp.tanh(x.reshape(x.shape[0], -1) @ v['w'])
  weights = {'w': np.ones((50, 2), np.float32) / 50}
  manifest = export.export(pure, weights, x, str(tmp_path / 'pure'), formats=FORMATS)
  assert manifest['batch_norm'] == {'folded': {}, 'kept': {}}
  for fmt in FORMATS:
    run = export.load(str(tmp_path / 'pure'), fmt)
    np.testing.assert_allclose(run(x[:2]), pure(weights, x[:2]), atol=1e-6)


def test_export_of_an_nnx_model_through_its_pure_function(tmp_path):
  from flax import nnx  # pylint: disable=import-outside-toplevel

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
      self.norm = nnx.BatchNorm(3, rngs=rngs)
      self.head = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.norm(self.conv(x))).mean((1, 2)))

  net = Net(nnx.Rngs(0))
  net.eval()
  graphdef, state = nnx.split(net)
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 5, 2)))
  manifest = export.export(lambda s, x: nnx.merge(graphdef, s)(x), state, x,
                           str(tmp_path), formats=FORMATS)
  assert manifest['batch_norm'] == {'folded': {}, 'kept': {}}  # NNX norms stay.
  for fmt in FORMATS:
    np.testing.assert_allclose(export.load(str(tmp_path), fmt)(x), net(x), atol=1e-5)


def test_unfinished_run_is_refused_and_nothing_is_written(runs, tmp_path):
  workdir = str(tmp_path / 'run')  # A run stopped before its summary: checkpoints only.
  shutil.copytree(runs['dense'], workdir, ignore=shutil.ignore_patterns(
      'export', workdir_lib.SUMMARY_FILE))
  with pytest.raises(export.ExportError, match='no finished run.*summary.json'):
    export_run.export_workdir(saved_config.load_config(workdir), workdir, ['stablehlo'])
  assert not [n for n in os.listdir(workdir) if 'export' in n]
  # A torn summary counts as none: refused the same way, the file kept in damaged/.
  with open(os.path.join(workdir, workdir_lib.SUMMARY_FILE), 'w') as f:
    f.write('{"top1": 0.9')
  with pytest.raises(export.ExportError, match='no intact summary.json'):
    export_run.export_workdir(saved_config.load_config(workdir), workdir, ['stablehlo'])
  assert os.path.exists(os.path.join(workdir, workdir_lib.DAMAGED_DIR, workdir_lib.SUMMARY_FILE))
  assert not [n for n in os.listdir(workdir) if 'export' in n]


@pytest.mark.parametrize('formats, batch, message', [
    (['stablehlo', 'tflite'], 'dynamic', r"format\(s\) \['tflite'\]; choose from"),
    (['stablehlo'], '0', "batch='0': give a positive integer"),
    (['stablehlo'], 'big', "batch='big'")])
def test_bad_settings_name_themselves_and_write_nothing(runs, tmp_path, formats, batch,
                                                        message):
  workdir = runs['dense']
  target = str(tmp_path / 'out')
  with pytest.raises(export.ExportError, match=message):
    export_run.export_workdir(saved_config.load_config(workdir), workdir, formats, batch,
                              directory=target)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_model_the_exporter_cannot_express_leaves_the_old_export(tmp_path, fmt):
  x = np.ones((2, 3), np.float32)
  target = tmp_path / 'out'
  export.export(lambda v, x: x * v, np.float32(2), x, str(target), formats=[fmt])
  before = {n: (target / n).read_bytes() for n in os.listdir(target)}
  host = lambda v, x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
  with pytest.raises(export.ExportError, match=f'^{fmt}: .* cannot express the model'):
    export.export(host, {}, x, str(target), formats=[fmt])
  assert {n: (target / n).read_bytes() for n in os.listdir(target)} == before
  assert sorted(os.listdir(tmp_path)) == ['out']


def test_a_format_without_its_modules_names_the_requirements_file(monkeypatch):
  monkeypatch.setattr(export, '_installed', lambda module: module != 'onnxruntime')
  with pytest.raises(export.ExportError, match='onnx format needs onnxruntime: pip install '
                     '-r requirements-export.txt'):
    export.parse_formats(['stablehlo', 'onnx'])
  assert export.parse_formats(['stablehlo']) == ('stablehlo',)
  monkeypatch.setattr(export, '_installed', lambda module: module != 'flatbuffers')
  with pytest.raises(export.ExportError, match='stablehlo format needs flatbuffers: pip '
                     'install -r requirements.txt'):
    export.parse_formats(['stablehlo'])


def test_command_line_export_with_a_fixed_batch(runs, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(runs['dense'], workdir, ignore=shutil.ignore_patterns('export'))
  result = run_main('--mode=export', f'--workdir={workdir}', '--format=stablehlo',
                    '--batch=7')
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = json.load(open(os.path.join(workdir, 'export', 'manifest.json')))
  assert manifest['input']['shape'] == [7, 8, 8, 3] and list(manifest['files']) == [
      'stablehlo']
  bad = run_main('--mode=export', f'--workdir={workdir}', '--format=tflite')
  assert bad.returncode != 0 and "['tflite']" in bad.stderr
