r"""ResNet-56 on CIFAR-10 with CCI 2 of 8, dynamic algorithm, accelerator schedule.

  python main.py --config=configs/resnet_cci.py --workdir=runs/resnet56_cci

Expect: not run here (160 epochs of ResNet-56 is about 90 hours on the 2-core CPU of this
project's machines; roughly 1-2 hours on one modern GPU, an estimate). For the measured
CPU-scale counterpart see configs/resnet20_cci_cpu.py and docs/results.md. `:oneshot` and
`:gradual` fine-tune runs/resnet56_dense (configs/resnet56_dense.py).
"""

from configs import cci_schedules, resnet56_dense


def get_config(method: str = 'dynamic'):
  config = resnet56_dense.get_config()
  cci_schedules.apply(config, method, dense_workdir='runs/resnet56_dense')
  return config
