"""CCI against dense, unstructured and filter pruning on ImageNet ResNet-50.

  python -m train.reproduce --table=imagenet_cci --preset=paper \
      --override=data.data_dir=/path/to/tensorflow_datasets

`paper` only (accelerators; not run on this project's CPU machines): dense 90 epochs
(5,000 training images held out, as for C2S2); `oneshot`, `gradual`, unstructured and
filter pruning fine-tune it for 22.5 epochs at lr 0.01; `dynamic` trains 90 epochs.
"""

from configs.tables import cifar10_cci
from train.tables import Row, Table

DENSE = 'configs/imagenet_resnet50_dense.py'
CCI = 'configs/imagenet_resnet50_cci.py'
BASELINES = 'configs/imagenet_resnet50_baselines.py'


def get_table(preset: str) -> Table:
  if preset != 'paper':
    raise ValueError(f'Table imagenet_cci has only the paper preset, not {preset!r}.')
  common = {'data.held_out': 5000}
  rows = [Row('r50_dense', 'dense', 'dense', DENSE, common)]
  rows += [Row(f'r50_unstructured_{d}', f'unstructured {d}% (GMP)', 'unstructured',
               f'{BASELINES}:unstructured', {'sparsity.keep': k}, start_from='r50_dense')
           for d, k in (('25', 2), ('12.5', 1))]
  rows.append(Row('r50_filter_equal_macs', 'L1 filter, CCI 2 of 8 MACs', 'L1 filter',
                  f'{BASELINES}:l1_filter', {'channel_pruning.target_macs_ratio': 0.26},
                  start_from='r50_dense'))
  for name, group, keep in cifar10_cci.PATTERNS:
    for method in ('oneshot', 'gradual', 'dynamic'):
      rows.append(Row(f'r50_cci_{name}_{method}', f'CCI {keep} of {group} {method}',
                      f'CCI {method}', f'{CCI}:{method}',
                      {**common, 'sparsity.group_size': group, 'sparsity.keep': keep},
                      start_from='' if method == 'dynamic' else 'r50_dense'))
  return Table('imagenet_cci', 'CCI on ImageNet ResNet-50 (paper preset)',
               __doc__.split('\n\n', 2)[2], tuple(rows), cifar10_cci.COLUMNS)
