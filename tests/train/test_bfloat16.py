"""bfloat16 compute (`model.dtype`) for C2S2 and the channel baselines, on CPU.

Parameters, scales and optimiser state stay float32; activations are bfloat16 (8-bit
mantissa: a relative rounding of 2**-8 per operation), so masked and compact models
agree only to bfloat16's accuracy, and that is what is asserted: the compact model is
no further from the float32 result than the masked bfloat16 model itself is (times 4),
and within 2**-4 of the logits' scale.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.c2s2.test_surgery import _compact, _masked_logits, _random_pruning, _setup
from tests.train.test_c2s2_driver import c2s2_config, decisions
from tests.train.test_channel_baselines import baseline_config
from train import c2s2_setup, checkpoints, data, dispatch, loop, model_setup, steps


@pytest.mark.parametrize('shortcut, streams', [
    ('A', False), pytest.param('B', True, marks=pytest.mark.slow)])
def test_masked_and_compact_models_agree_to_bfloat16_accuracy(shortcut, streams):
  model, variables, x, graph = _setup('resnet8', shortcut, 16)
  names = [g.name for g in graph.prunable() if streams or not g.joined]
  masks, scales = _random_pruning(graph, names, seed=len(names))
  exact = _masked_logits(model, variables, graph, masks, scales, x)
  masked = _masked_logits(model.clone(dtype=jnp.bfloat16), variables, graph, masks,
                          scales, x)
  compact, sliced = _compact('resnet8', shortcut, variables, graph, masks, scales)
  compact = compact.clone(dtype=jnp.bfloat16)
  logits = jax.jit(functools.partial(compact.apply, train=False))(sliced, x)
  masked_error = np.abs(np.asarray(masked, np.float32) - exact).max()
  compact_error = np.abs(np.asarray(logits, np.float32) - exact).max()
  assert masked_error > 0  # bfloat16 really ran.
  assert compact_error <= 4 * masked_error
  np.testing.assert_allclose(logits, masked, rtol=0,
                             atol=2**-4 * float(np.abs(exact).max()))


def assert_float32_state(config, workdir):
  state = loop.restore_latest(config, workdir)[1]
  dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)}
  assert dtypes == {np.dtype('float32')}


def phase1_scales(dense_workdir, dtype):
  """The first unit's scales and the loss after five C2S2 phase-1 steps."""
  config = c2s2_config(dense_workdir)
  config.model.dtype = dtype
  setup = c2s2_setup.make_setup(config)
  model = model_setup.build_model(config, setup.dataset.num_classes, setup.original_widths)
  graph = model_setup.trace_graph(model, setup.dataset.image_shape)
  variables = checkpoints.load_variables(
      dense_workdir, model_setup.abstract_variables(model, setup.dataset.image_shape))
  state = steps.replicate(c2s2_setup.initial_state(setup, graph, variables), setup.mesh)
  state = c2s2_setup.with_unit(state, graph, setup.units[0])
  step = c2s2_setup.make_train_step(setup, model, graph, 'phase1', setup.lambdas)
  batches = data.train_batches(setup.dataset.train, batch_size=config.batch_size,
                               seed=0, start_step=0, crop_padding=1, flip=True)
  for _ in range(5):
    state, values = step(state, steps.to_global(next(batches), setup.mesh))
  batches.close()
  return (state.params[c2s2_setup.SCALES_KEY][setup.units[0][0]],
          float(values['loss']))


def test_c2s2_selection_steps_in_bfloat16_follow_float32(tiny_dense_workdir):
  exact, exact_loss = phase1_scales(tiny_dense_workdir, 'float32')
  scales, loss = phase1_scales(tiny_dense_workdir, 'bfloat16')
  assert scales.dtype == jnp.float32
  moved = float(jnp.abs(exact - 1).max())
  assert moved > 0.1
  difference = float(jnp.abs(scales - exact).max())
  assert 0 < difference <= 0.02 * moved  # bfloat16 ran, and its scales follow.
  assert loss == pytest.approx(exact_loss, rel=2**-6)


@pytest.mark.slow
def test_c2s2_selects_prunes_and_fine_tunes_in_bfloat16(tiny_dense_workdir, tmp_path):
  config = c2s2_config(tiny_dense_workdir)
  config.model.dtype = 'bfloat16'
  summary = dispatch.train_and_evaluate(config, str(tmp_path))
  assert [d['unit'] for d in decisions(str(tmp_path))] == [0, 1, 2]
  channels = summary['channels']
  assert any(v['kept'] < v['original'] for v in channels.values()), channels
  assert summary['macs'] < summary['macs_original']
  assert np.isfinite(summary['loss']) and summary['nonfinite_steps_skipped'] == 0
  assert_float32_state(config, str(tmp_path))


@pytest.mark.parametrize('method, settings', [
    ('l1_filter', {'prune_fraction': 0.5}),
    pytest.param('slimming', {'target_macs_ratio': 0.8}, marks=pytest.mark.slow),
])
def test_channel_baselines_in_bfloat16(tiny_dense_workdir, tmp_path, method, settings):
  config = baseline_config(tiny_dense_workdir, method, **settings)
  config.model.dtype = 'bfloat16'
  summary = dispatch.train_and_evaluate(config, str(tmp_path))
  channels = summary['channels']
  pruned = {k: v for k, v in channels.items() if v['kept'] < v['original']}
  assert pruned
  if method == 'l1_filter':
    assert all(v['kept'] == v['original'] // 2 for v in pruned.values())
  else:
    assert summary['macs'] <= 0.8 * summary['macs_original']
  assert np.isfinite(summary['loss']) and summary['nonfinite_steps_skipped'] == 0
  assert 0 <= summary['top1'] <= 1
  assert_float32_state(config, str(tmp_path))
