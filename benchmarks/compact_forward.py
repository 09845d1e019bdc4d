"""Inference latency of a compact C2S2 model against the original.

  python -m benchmarks --only=compact_forward

The compact model is what C2S2's surgery leaves: the same network with fewer channels
in the pruned convs, built from `model.widths` (here half the channels of every
block's conv1, the groups C2S2 selects in a CIFAR ResNet). Both are jitted inference
forward passes on random weights, timed interleaved; reported without a target.
"""

import jax

from benchmarks import common
from train import models, timing
from train.models import stats

FULL = ('resnet20', (1, 128), 10)  # model, batches, repeats
SMOKE = ('resnet8', (2,), 2)
IMAGE_SIZE = 32


def half_conv1(model_name: str) -> dict[str, int]:
  """Widths with half the channels of every residual block's first conv."""
  return {path: max(1, width // 2)
          for path, width in models.default_widths(model_name).items()
          if path.endswith('/conv1')}


def measure(smoke: bool) -> list[common.Entry]:
  """Per batch: compact seconds, ratio to the original (and both models' MACs)."""
  model_name, batches, repeats = SMOKE if smoke else FULL
  shape = (1, IMAGE_SIZE, IMAGE_SIZE, 3)
  fns, macs = {}, {}
  for kind, widths in (('original', None), ('compact', half_conv1(model_name))):
    model = models.build_model(model_name, 10, widths=widths)
    variables = common.init_variables(model, IMAGE_SIZE)
    macs[kind] = stats.total_macs(stats.layer_stats(model, variables, shape))
    apply = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
    fns[kind] = lambda x, a=apply, v=variables: a(v, x)
  entries = []
  for batch in batches:
    x = jax.random.normal(jax.random.key(1), (batch, IMAGE_SIZE, IMAGE_SIZE, 3))
    seconds = timing.interleaved({k: lambda f=f: f(x) for k, f in fns.items()}, repeats)
    entries.append(common.entry(
        f'compact_forward/{model_name}_half_conv1/b{batch}', seconds['compact'],
        f'{model_name} original', seconds['original'], None,
        macs=macs['compact'], macs_original=macs['original']))
  return entries
