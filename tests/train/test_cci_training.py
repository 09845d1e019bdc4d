"""CCI through the training loop: every algorithm ends exactly sparse; resume; bad input."""

import json
import os

import jax
import numpy as np
import pytest

import cci
from configs import cci_schedules
from tests.train.test_loop import final_state, tiny_config
from train import dispatch, loop


@pytest.fixture(scope='module')
def dense_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('dense'))
  dispatch.train_and_evaluate(tiny_config(), workdir)
  return workdir


def cci_config(method, dense_workdir):
  config = tiny_config()
  cci_schedules.apply(config, method, dense_workdir)
  config.num_train_steps = 16
  config.sparsity.update_every = 2
  config.sparsity.freeze_fraction = 0.25
  return config


@pytest.mark.parametrize('method', cci.METHODS)
def test_every_grouped_kernel_in_the_checkpoint_is_exactly_cci(method, dense_workdir,
                                                              tmp_path):
  config = cci_config(method, dense_workdir)
  summary = dispatch.train_and_evaluate(config, str(tmp_path))
  state = final_state(config, str(tmp_path))
  masks = cci.find_state(state.opt_state).masks
  grouped = 0
  for (path, kernel), (_, mask) in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                       jax.tree_util.tree_leaves_with_path(masks)):
    if np.ndim(mask) == 0:
      continue
    grouped += 1
    kernel, mask = np.asarray(kernel), np.asarray(mask)
    assert np.all(np.asarray(cci.kept_per_group(mask, 8)) == 2), path
    assert np.all(kernel[~mask] == 0), path
    assert np.all(np.asarray(cci.kept_per_group(kernel != 0, 8)) <= 2), path
  assert grouped == 7  # ResNet-8: every conv but the stem (c_in=3), and the head.
  assert summary['density'] < 0.3 and summary['macs'] < summary['macs_dense'] / 3
  layers = json.load(open(tmp_path / 'layers.json'))
  assert {l['path'] for l in layers if not l['grouped']} == {'stem_conv'}


def test_an_interrupted_cci_run_resumes_to_the_same_state(tmp_path):
  config = cci_config('dynamic', '')
  dispatch.train_and_evaluate(config, str(tmp_path / 'a'))
  dispatch.train_and_evaluate(config, str(tmp_path / 'b'), stop_at_step=10)
  dispatch.train_and_evaluate(config, str(tmp_path / 'b'))
  a, b = final_state(config, str(tmp_path / 'a')), final_state(config, str(tmp_path / 'b'))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('key, value, message', [
    ('keep', 8, r'sparsity.keep=8 .*group_size=8'),
    ('group_size', 7, r'No kernel can be grouped with group_size=7'),
    ('include', 'stem_conv', r'stem_conv/kernel: c_in=3 is not divisible'),
    ('method', 'magic', r'sparsity.method'),
])
def test_bad_sparsity_settings_fail_before_training(tmp_path, key, value, message):
  config = cci_config('dynamic', '')
  config.sparsity[key] = value
  with pytest.raises(ValueError, match=message):
    dispatch.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_init_from_a_missing_workdir_names_it(tmp_path):
  config = cci_config('oneshot', str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    dispatch.train_and_evaluate(config, str(tmp_path / 'run'))


def test_efficiency_mode_needs_a_dense_reference_for_a_cci_model(dense_workdir, tmp_path):
  config = cci_config('dynamic', '')
  dispatch.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match='--reference'):
    loop.efficiency(config, str(tmp_path), '', pes=64)
  result = loop.efficiency(config, str(tmp_path), dense_workdir, pes=64)
  methods = result['methods']
  assert methods['cci']['density'] == pytest.approx(methods['unstructured']['density'])
  assert methods['cci']['speedup'] > methods['unstructured']['speedup'] > 0.99
  assert methods['dense']['speedup'] == 1.0
  assert json.load(open(tmp_path / 'efficiency.json'))['unstructured_from'] == dense_workdir


def test_unstructured_baseline_reaches_its_density_with_csr_index_bits(dense_workdir,
                                                                       tmp_path):
  from configs import baseline_schedules
  config = tiny_config()
  baseline_schedules.apply(config, 'unstructured', dense_workdir)
  config.num_train_steps = 8
  config.sparsity.update_every = 2
  summary = dispatch.train_and_evaluate(config, str(tmp_path))
  state = final_state(config, str(tmp_path))
  masks = cci.find_state(state.opt_state).masks
  kernels = [(np.asarray(w), np.asarray(m)) for w, m in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)) if np.ndim(m)]
  assert len(kernels) == 7
  for kernel, mask in kernels:
    assert mask.sum() == round(0.25 * mask.size) and np.all(kernel[~mask] == 0)
  assert any((np.asarray(cci.kept_per_group(m, 8)) != 2).any() for _, m in kernels)
  layers = json.load(open(tmp_path / 'layers.json'))
  grouped = [l for l in layers if l['grouped']]
  # CSR: more index bits per kept weight than CCI's 3 (log2 of 8).
  assert all(l['index_bits'] > 3 * l['density'] * np.prod(l['kernel_shape'])
             for l in grouped)
  assert summary['density'] < 0.3


def test_bfloat16_compute_keeps_float32_params_and_exact_masks(tmp_path):
  config = tiny_config(num_train_steps=6)
  config.model.dtype = 'bfloat16'
  config.sparsity.method = 'dynamic'
  config.sparsity.freeze_fraction = 0.5
  summary = dispatch.train_and_evaluate(config, str(tmp_path))
  state = final_state(config, str(tmp_path))
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype('float32')}
  masks = [m for m in jax.tree.leaves(cci.find_state(state.opt_state).masks) if np.ndim(m)]
  assert masks and all(m.dtype == np.bool_ for m in masks)
  assert all(np.all(np.asarray(cci.kept_per_group(m, 8)) == 2) for m in masks)
  assert np.isfinite(summary['loss'])
