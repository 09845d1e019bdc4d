"""VGG-16's training step with the CPU conv rewrite against plain convs.

  python -m benchmarks --only=vgg_conv

`model.conv_impl='auto'` runs the 3x3 convs with 2x2 output positions (the last
block on 32x32 inputs) as patches + matmul on CPU, where XLA:CPU's conv is
pathological; 'xla' runs every conv as `nn.Conv` does (train/models/common.py). Dense
train/steps.py steps, interleaved. Ratio auto / xla: the rewrite must make the step
at least 3x faster (target 1/3).
"""

from benchmarks import common
from train import timing

TARGET = 1 / 3
# model, batch, repeats: ~1 s (auto) and ~4 s (xla) per step at batch 32 on 2 cores.
FULL = ('vgg16', 32, 3)
SMOKE = ('vgg16', 2, 1)


def measure(smoke: bool) -> list[common.Entry]:
  """One entry: seconds per 'auto' step, ratio to the 'xla' step."""
  model_name, batch_size, repeats = SMOKE if smoke else FULL
  fns = {impl: common.train_step(model_name, batch_size, conv_impl=impl)
         for impl in ('xla', 'auto')}
  seconds = timing.interleaved(fns, repeats, warmup=1)
  return [common.entry(f'vgg_conv/{model_name}/b{batch_size}/auto_vs_xla',
                       seconds['auto'], f'train_step/{model_name}/b{batch_size} xla',
                       seconds['xla'], TARGET, speedup=seconds['xla'] / seconds['auto'])]
