"""C2S2 surgery on models written in the common Flax style, not by this project.

  python -m benchmarks.foreign_models                 # ResNet-18 and VGG-16, 112x112
  python -m benchmarks.foreign_models --smoke         # tiny sizes: checks the script runs

A full run of every model writes results/foreign_models.json (the figures of
docs/your_model.md): each model's result, the settings and the machine; `--out` writes
elsewhere.

ImageNet-style ResNet-18 and VGG-16 with hard-coded widths (`@nn.compact`, layers named
by Flax) are traced into channel graphs; every prunable group loses the same fraction
of its channels, the smallest filter L1 norms first (Li et al. 2017); the sliced
variables run through `c2s2.compact_apply` and must equal the masked model. Printed:
channels removed, MACs and parameters before and after, and CPU inference latency of
the compact against the original model, jitted and timed interleaved. The weights are
random (no ImageNet checkpoint here): the figures are about structure and speed, not
accuracy.
"""

import functools
import json
import math
import os
from typing import Any

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import c2s2
from c2s2 import criteria
from train import provenance, timing
from train import workdir as workdir_lib
from train.models import stats


class ResNetBlock(nn.Module):
  """Basic block as in flax's examples/imagenet: projection when shapes differ."""
  filters: int
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = norm()(nn.Conv(self.filters, (3, 3), use_bias=False)(y))
    if x.shape != y.shape:
      x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, name='conv_proj')(x)
      x = norm(name='norm_proj')(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ImageNet ResNet-18: 7x7 stem, max pool, four stages of two basic blocks."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                name='conv_init')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='bn_init')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for stage, filters in enumerate((64, 128, 256, 512)):
      for block in range(2):
        strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
        x = ResNetBlock(filters, strides)(x, train)
    return nn.Dense(1000)(jnp.mean(x, axis=(1, 2)))


class VGG16(nn.Module):
  """VGG-16 (configuration D): 13 convs with ReLU, flatten, 4096-4096-1000."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                  (512, 512, 512)):
      for width in block:
        x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for _ in range(2):
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(4096)(x)))
    return nn.Dense(1000)(x)


MODELS = {'resnet18': ResNet18, 'vgg16': VGG16}


def _leaf(tree: Any, path: str) -> Any:
  for key in path.split('/'):
    tree = tree[key]
  return tree


def calibrate(model: nn.Module, variables: Any, image_size: int,
              passes: int = 30) -> Any:
  """Running statistics of one random batch (train-mode passes), so that activations
  keep their scale through the random network instead of fading to zero."""
  x = jax.random.normal(jax.random.key(1), (8, image_size, image_size, 3))

  @jax.jit
  def update(variables):
    _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return {**variables, **updates}

  for _ in range(passes):
    variables = update(variables)
  return variables


def prune(model: nn.Module, image_size: int, fraction: float) -> dict[str, Any]:
  """Variables, graph, L1 masks and sliced variables of `model` at `image_size`."""
  x = jnp.zeros((1, image_size, image_size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  if 'batch_stats' in variables:
    variables = calibrate(model, variables, image_size)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  graph = c2s2.trace_channel_graph(lambda v, inputs: model.apply(v, inputs), shapes,
                                   jax.ShapeDtypeStruct(x.shape, x.dtype))
  importance = {g.name: criteria.filter_l1_norms(variables['params'], g)
                for g in graph.prunable()}
  masks = criteria.uniform_masks(importance, fraction, min_channels=1)
  removal = c2s2.plan(graph, masks, variables)
  sliced = jax.jit(lambda v: c2s2.slice_variables(v, removal))(variables)
  return {'variables': variables, 'graph': graph, 'masks': masks, 'sliced': sliced}


def macs(model: nn.Module, variables: Any, params: Any, image_size: int) -> int:
  """MACs per image with the kernels in `params` (the output positions of `variables`)."""
  layers = stats.layer_stats(model, variables, (1, image_size, image_size, 3), {})
  return sum(math.prod(np.shape(_leaf(params, f'{s.path}/kernel')))
             * math.prod(s.output_shape[1:-1]) for s in layers)


def check_equal(model: nn.Module, pruned: dict[str, Any], image_size: int) -> float:
  """Max |masked - compact| logits over the max |logit| (binary pruning layers)."""
  graph, masks = pruned['graph'], pruned['masks']
  sites = graph.at_sites({g.name: jnp.asarray(masks[g.name], jnp.float32)
                          for g in graph.prunable()})
  ones = {s: jnp.ones_like(m) for s, m in sites.items()}
  x = jax.random.normal(jax.random.key(2), (2, image_size, image_size, 3))

  @jax.jit
  def masked(variables):
    with c2s2.pruning_layers(ones, sites):
      return model.apply(variables, x)

  expected = masked(pruned['variables'])
  out = jax.jit(c2s2.compact_apply(model))(pruned['sliced'], x)
  return float(jnp.max(jnp.abs(out - expected)) / jnp.max(jnp.abs(expected)))


def measure(name: str, image_size: int, batches: list[int], repeats: int,
            fraction: float) -> dict[str, Any]:
  """Channels, MACs, parameters and latency of one model before and after surgery."""
  model = MODELS[name]()
  pruned = prune(model, image_size, fraction)
  graph, masks, variables, sliced = (pruned[k] for k in
                                     ('graph', 'masks', 'variables', 'sliced'))
  error = check_equal(model, pruned, image_size)
  if not error <= 1e-5:  # nan too
    raise AssertionError(f'{name}: masked and compact logits differ by {error:.2e}.')
  prunable = graph.prunable()
  result = {
      'name': name, 'image_size': image_size, 'groups': len(graph.groups),
      'prunable': len(prunable), 'joined': sum(g.joined for g in prunable),
      'unprunable': [(g.name, g.reason) for g in graph.groups if not g.prunable],
      'channels': sum(g.size for g in graph.groups),
      'channels_prunable': sum(g.size for g in prunable),
      'channels_removed': int(sum((~m).sum() for m in masks.values())),
      'macs': macs(model, variables, variables['params'], image_size),
      'macs_compact': macs(model, variables, sliced['params'], image_size),
      'params': stats.count_params(variables['params']),
      'params_compact': stats.count_params(sliced['params']),
      'relative_error': error, 'latency': {}}
  original = jax.jit(model.apply)
  compact = jax.jit(c2s2.compact_apply(model))
  for batch in batches:
    x = jax.random.normal(jax.random.key(3), (batch, image_size, image_size, 3))
    result['latency'][batch] = timing.interleaved(
        {'original': lambda x=x: original(variables, x),
         'compact': lambda x=x: compact(sliced, x)}, repeats)
  return result


def report(r: dict[str, Any]) -> str:
  """The printed lines of one model's result."""
  lines = [
      f'{r["name"]} at {r["image_size"]}x{r["image_size"]} (random weights)',
      f'  channel groups        {r["groups"]}: {r["prunable"]} prunable ('
      f'{r["joined"]} residual streams), unprunable: '
      + '; '.join(f'{n} ({why})' for n, why in r['unprunable']),
      f'  channels removed      {r["channels_removed"]} of {r["channels_prunable"]} '
      f'prunable ({r["channels_removed"] / r["channels_prunable"]:.0%}); '
      f'{r["channels"]} output channels of all convs and denses',
      f'  MACs per image        {r["macs"] / 1e9:.3f}G -> {r["macs_compact"] / 1e9:.3f}G '
      f'({r["macs"] / r["macs_compact"]:.2f}x fewer)',
      f'  parameters            {r["params"] / 1e6:.2f}M -> '
      f'{r["params_compact"] / 1e6:.2f}M '
      f'({r["params"] / r["params_compact"]:.2f}x fewer)',
      f'  masked vs compact     max |difference| / max |logit| = '
      f'{r["relative_error"]:.1e}']
  for batch, seconds in r['latency'].items():
    lines.append(
        f'  CPU latency batch {batch:<3} original {seconds["original"] * 1e3:8.1f} ms, '
        f'compact {seconds["compact"] * 1e3:8.1f} ms '
        f'({seconds["original"] / seconds["compact"]:.2f}x faster)')
  return '\n'.join(lines)


_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny sizes, for tests.')
_MODELS = flags.DEFINE_list('models', list(MODELS), 'Models to measure.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 112, 'Input height and width.')
_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes timed.')
_REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed calls per variant.')
_FRACTION = flags.DEFINE_float('fraction', 0.5, 'Channels removed from every group.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the results as JSON (default: '
                           'results/foreign_models.json for a full run of every model).')
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'results', 'foreign_models.json')


def main(argv):
  del argv
  size, batches, repeats = _IMAGE_SIZE.value, [int(b) for b in _BATCHES.value], \
      _REPEATS.value
  if _SMOKE.value:
    size, batches, repeats = 32, [1], 2
  machine = provenance.machine()
  print(f'Every prunable group loses {_FRACTION.value:.0%} of its channels (smallest '
        f'filter L1 norm); latency: jitted forward, median of {repeats} interleaved '
        f'calls on {machine["cpu"]} ({machine["platform"]}).')
  results = []
  for name in _MODELS.value:
    results.append(measure(name, size, batches, repeats, _FRACTION.value))
    print(report(results[-1]), flush=True)
  full = not _SMOKE.value and set(_MODELS.value) == set(MODELS)
  out = _OUT.value or (RESULTS if full else None)
  if out:
    settings = {'image_size': size, 'batches': batches, 'repeats': repeats,
                'fraction': _FRACTION.value, 'smoke': _SMOKE.value}
    workdir_lib.write_text(out, json.dumps(
        {'machine': machine, 'settings': settings, 'models': results}, indent=2,
        default=str) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
