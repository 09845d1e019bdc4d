"""docs/your_model.md, section "Your own NNX model", runs as written on an NNX model."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import c2s2
import cci
from tests import markdown_docs
from tests.nnx import models


def test_the_documented_examples_run_on_an_nnx_model(tmp_path):
  blocks = markdown_docs.code_blocks('docs/your_model.md', 'Your own NNX model')
  assert len(blocks) == 3
  make_model = lambda: models.build(models.ResidualNet)
  model = make_model()
  images = jax.random.normal(jax.random.key(3), (3, 4, 8, 8, 3))
  model.eval()
  labels = jnp.argmax(jax.vmap(model)(images), -1)
  model.train()
  batches = list(zip(images, labels))
  namespace = {'optax': optax, 'jnp': jnp, 'model': model, 'x': images[0],
               'num_steps': 6, 'workdir': str(tmp_path), 'make_model': make_model,
               'steps_per_epoch': 2, 'train_batches': itertools.cycle(batches[:2]),
               'held_out': lambda: batches[2:]}

  exec(blocks[0], namespace)  # pylint: disable=exec-used
  spec, optimizer = namespace['spec'], namespace['optimizer']
  assert spec.grouped == ('blocks/0/conv1/kernel', 'blocks/0/conv2/kernel',
                          'blocks/1/conv1/kernel', 'blocks/1/shortcut_conv/kernel')
  losses = [float(namespace['train_step'](model, optimizer, *batches[0]))
            for _ in range(6)]
  assert np.all(np.isfinite(losses))
  masks = cci.find_state(nnx.as_pure(optimizer.opt_state)).masks
  for path in spec.grouped:
    node = masks
    for key in path.split('/'):
      node = node[int(key) if key.isdigit() else key]
    np.testing.assert_array_equal(cci.kept_per_group(node, 8), 2, err_msg=path)

  exec(blocks[1], namespace)  # pylint: disable=exec-used
  graph, chosen = namespace['graph'], namespace['masks']
  apply, variables = c2s2.nnx.functional(model)
  ones = {name: jnp.ones(mask.size) for name, mask in chosen.items()}
  folded = c2s2.fold_scales(variables['params'], graph, ones, chosen)
  np.testing.assert_allclose(namespace['logits'],
                             apply({**variables, 'params': folded}, images[0])[0],
                             rtol=1e-5, atol=1e-5)
  reloaded = namespace['reloaded']
  reloaded.eval()
  np.testing.assert_array_equal(reloaded(images[0]), namespace['logits'])

  exec(blocks[2], namespace)  # pylint: disable=exec-used
  result = namespace['result']
  assert [d['unit'] for d in result.decisions if d['retry'] == 0] == [0, 1]
  kept = {}
  for decision in result.decisions:
    if decision['action'] in ('accept', 'give_up'):
      kept.update({n: layer['kept'] if decision['action'] == 'accept'
                   else layer['channels'] for n, layer in decision['layers'].items()})
  compact = namespace['compact']
  assert kept == {'blocks/0/conv1': compact.blocks[0].conv1.out_features,
                  'blocks/1/conv1': compact.blocks[1].conv1.out_features}
  assert namespace['pruned'].blocks[1].conv1.out_features == namespace['masks'][
      'blocks/1/conv1'].sum() == 6
