"""C2S2 against L1-filter pruning and network slimming on ImageNet ResNet-50.

  python -m train.reproduce --table=imagenet_c2s2 --preset=paper \
      --override=data.data_dir=/path/to/tensorflow_datasets

`paper` only (accelerators; not run on this project's CPU machines): from the dense run
shared with imagenet_cci; the baselines prune to a 27.6% MACs reduction; C2S2 at
budgets of 0.5% and 1% held-out top-1; fine-tunes of 22.5 epochs at lr 0.01.
"""

from configs.tables import cifar10_c2s2, imagenet_cci
from train.tables import Row, Table


def get_table(preset: str) -> Table:
  if preset != 'paper':
    raise ValueError(f'Table imagenet_c2s2 has only the paper preset, not {preset!r}.')
  dense = imagenet_cci.get_table(preset).rows[0]
  target = {'channel_pruning.target_macs_ratio': cifar10_c2s2.LI_ET_AL_MACS_RATIO}
  baselines = imagenet_cci.BASELINES
  rows = (
      dense,
      Row('r50_l1_filter_li', 'L1 filter (27.6% fewer MACs)', 'L1 filter',
          f'{baselines}:l1_filter', target, start_from=dense.name),
      Row('r50_slimming_train', 'slimming: L1 on BN scales', 'slimming (training)',
          f'{baselines}:slimming_train', {}, start_from=dense.name),
      Row('r50_slimming_li', 'network slimming (27.6% fewer MACs)', 'network slimming',
          f'{baselines}:slimming', target, start_from='r50_slimming_train'),
      Row('r50_c2s2_eps05', 'C2S2, budget 0.5% top-1', 'C2S2',
          'configs/imagenet_resnet50_c2s2.py', {'channel_pruning.epsilon': 0.005},
          start_from=dense.name),
      Row('r50_c2s2_eps1', 'C2S2, budget 1% top-1', 'C2S2',
          'configs/imagenet_resnet50_c2s2.py', {'channel_pruning.epsilon': 0.01},
          start_from=dense.name),
  )
  return Table('imagenet_c2s2', 'C2S2 on ImageNet ResNet-50 (paper preset)',
               __doc__.split('\n\n', 2)[2], rows, cifar10_c2s2.COLUMNS)
