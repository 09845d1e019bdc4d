"""The dense ResNet-20 step on this CPU beside PyTorch's figure.

  python -m benchmarks --only=pytorch_reference

PyTorch 2.13 on CPU (channels_last) ran a ResNet-20 training step at batch 128 in
0.43 s on this project's 2-core machines (../shared/ENVIRONMENT.md; PyTorch is not
installed here, so the figure is quoted, not re-measured). Ratio: our dense step
(train/steps.py) / 0.43 s; reported without a target.
"""

from benchmarks import common
from train import timing

PYTORCH_SECONDS = 0.43  # ResNet-20, batch 128, ENVIRONMENT.md.
FULL = ('resnet20', 128, 5)  # model, batch, repeats
SMOKE = ('resnet8', 8, 2)


def measure(smoke: bool) -> list[common.Entry]:
  """One entry: our seconds per step and images/s, ratio to PyTorch's seconds."""
  model_name, batch_size, repeats = SMOKE if smoke else FULL
  seconds = timing.interleaved({'ours': common.train_step(model_name, batch_size)},
                               repeats)['ours']
  return [common.entry(f'pytorch_reference/{model_name}/b{batch_size}', seconds,
                       'pytorch resnet20 b128 (quoted)', PYTORCH_SECONDS, None,
                       images_per_s=batch_size / seconds,
                       pytorch_images_per_s=128 / PYTORCH_SECONDS)]
