r"""The comparison baselines on ImageNet ResNet-50 (accelerators, the `paper` preset).

  python main.py --config=configs/imagenet_resnet50_baselines.py:l1_filter \
      --workdir=runs/r50_l1 --config.data.data_dir=/path/to/tensorflow_datasets

`:unstructured`, `:l1_filter`, `:slimming_train` and `:slimming` (see
configs/baseline_schedules.py) fine-tune runs/r50_dense (configs/imagenet_resnet50_dense.py
with --config.data.held_out=5000) for 22.5 epochs at lr
0.01. Expect: not run here (accelerators).
"""

from configs import baseline_schedules, imagenet_resnet50_dense


def get_config(baseline: str = 'unstructured'):
  config = imagenet_resnet50_dense.get_config()
  config.data.held_out = 5000
  baseline_schedules.apply(config, baseline, dense_workdir='runs/r50_dense')
  return config
