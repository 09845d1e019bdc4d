r"""The comparison baselines on ResNet-56 (accelerator schedule, the `paper` preset).

  python main.py --config=configs/resnet56_baselines.py:l1_filter --workdir=runs/r56_l1

`:unstructured`, `:l1_filter`, `:slimming_train` and `:slimming` (see
configs/baseline_schedules.py) fine-tune runs/resnet56_dense for 40 epochs at lr 0.01.
Expect: not run here (about 22 hours per run on the 2-core CPU of this project's
machines). Li et al. report 93.06% for ResNet-56 with 27.6% fewer FLOPs (their
schedule, for placing results only).
"""

from configs import baseline_schedules, resnet56_dense


def get_config(baseline: str = 'unstructured'):
  config = resnet56_dense.get_config()
  baseline_schedules.apply(config, baseline, dense_workdir='runs/resnet56_dense')
  return config
