"""L1-filter pruning and network slimming end to end on the embedded digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import c2s2
from c2s2 import surgery
from tests.train.test_loop import tiny_config
from train import channel_baselines, checkpoints, data, dispatch, model_setup
from train import models


def baseline_config(init_from, method, **channel_pruning):
  config = tiny_config(num_train_steps=8, init_from=init_from)
  config.channel_pruning.method = method
  config.channel_pruning.latency_batch = 8
  for key, value in channel_pruning.items():
    config.channel_pruning[key] = value
  return config


def test_masked_and_physically_pruned_models_agree(tiny_dense_workdir):
  config = tiny_config()
  dataset = data.load_dataset(config.data)
  widths = models.default_widths(config.model.name, dataset.num_classes, 'A')
  model = model_setup.build_model(config, dataset.num_classes, widths)
  graph = model_setup.trace_graph(model, dataset.image_shape)
  names = model_setup.candidate_groups(graph, config.channel_pruning)
  variables = checkpoints.load_variables(
      tiny_dense_workdir, model_setup.abstract_variables(model, dataset.image_shape))
  importance = channel_baselines.importance_of('l1_filter', variables['params'], graph, names)
  masks = channel_baselines.masks_at('l1_filter', importance, 0.5, 2, 1)
  compact = surgery.slice_variables(variables, surgery.plan(graph, masks, variables))
  kept = dict(widths)
  for name, mask in masks.items():
    assert mask.sum() == graph.group(name).size // 2
    kept.update({p: int(mask.sum()) for p in graph.group(name).producers})
  x = (jnp.asarray(dataset.test.images[:32], jnp.float32) - dataset.mean) / dataset.std
  sites = {s: jnp.ones(len(m)) for n, m in masks.items() for s in graph.group(n).sites}
  site_masks = {s: jnp.asarray(m, jnp.float32) for n, m in masks.items()
                for s in graph.group(n).sites}
  with c2s2.pruning_layers(sites, site_masks):
    masked = model.apply(variables, x, train=False)
  small = model_setup.build_model(config, dataset.num_classes, kept)
  np.testing.assert_allclose(small.apply(compact, x, train=False), masked, rtol=1e-5,
                             atol=1e-5)


def test_l1_filter_prunes_the_fraction_and_fine_tunes(tiny_dense_workdir, tmp_path):
  workdir = str(tmp_path / 'l1')
  summary = dispatch.train_and_evaluate(
      baseline_config(tiny_dense_workdir, 'l1_filter', prune_fraction=0.5), workdir)
  channels = summary['channels']
  pruned = {k: v for k, v in channels.items() if v['kept'] < v['original']}
  assert pruned and all(k.endswith('/conv1') for k in pruned)
  assert all(v['kept'] == v['original'] // 2 for v in pruned.values())
  assert summary['macs'] < summary['macs_original'] and 0 <= summary['top1'] <= 1
  # Rerun: the pruned model in the workdir is reused, nothing is pruned twice.
  again = dispatch.train_and_evaluate(
      baseline_config(tiny_dense_workdir, 'l1_filter', prune_fraction=0.5), workdir)
  assert again['channels'] == channels


def test_slimming_trains_l1_on_scales_then_meets_the_macs_target(tiny_dense_workdir,
                                                                  tmp_path):
  sparse = str(tmp_path / 'sparse')
  config = tiny_config(num_train_steps=8, init_from=tiny_dense_workdir)
  config.optimizer.norm_scale_l1 = 0.5
  dispatch.train_and_evaluate(config, sparse)
  workdir = str(tmp_path / 'slim')
  summary = dispatch.train_and_evaluate(
      baseline_config(sparse, 'slimming', target_macs_ratio=0.8), workdir)
  assert summary['macs'] <= 0.8 * summary['macs_original']
  assert all(v['kept'] >= 2 for v in summary['channels'].values())


def test_norm_scale_l1_pushes_norm_scales_only():
  from train import optim
  config = tiny_config()
  config.optimizer.norm_scale_l1 = 0.1
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  tx = optim.make_optimizer(config.optimizer, lambda _: 1.0)
  params = {'bn': {'scale': jnp.array([1.0, -2.0]), 'bias': jnp.array([1.0, 1.0])}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['bn']['scale'], [-0.1, 0.1])
  np.testing.assert_allclose(updates['bn']['bias'], [0.0, 0.0])


@pytest.mark.parametrize('key, value, message', [
    ('prune_fraction', 1.5, 'prune_fraction must be in'),
    ('target_macs_ratio', 0.01, 'target_macs_ratio=0.01 cannot be met'),
])
def test_bad_baseline_settings_are_named(tiny_dense_workdir, tmp_path, key, value, message):
  config = baseline_config(tiny_dense_workdir, 'l1_filter', **{key: value})
  with pytest.raises(ValueError, match=message):
    dispatch.train_and_evaluate(config, str(tmp_path / 'bad'))
