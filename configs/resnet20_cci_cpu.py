r"""ResNet-20, CCI 2 of 8, on the shared CIFAR-10 archive: a schedule for 2 CPU cores.

  python main.py --config=configs/resnet20_cci_cpu.py --workdir=runs/resnet20_cci_dynamic
  python main.py --config=configs/resnet20_cci_cpu.py:oneshot --workdir=runs/resnet20_cci_oneshot
  python main.py --config=configs/resnet20_cci_cpu.py:gradual --workdir=runs/resnet20_cci_gradual

`dynamic` trains from scratch on the dense `resnet20_cpu.py` schedule; `oneshot` and
`gradual` fine-tune its finished run in runs/resnet20_cpu (run that first).
Expect (2-core x86 CPU, no accelerator): see the README's CCI table, produced by these
commands: dynamic MEASURE_DYN, oneshot MEASURE_ONE, gradual MEASURE_GRAD test top-1.
"""

from configs import cci_schedules, resnet20_cpu


def get_config(method: str = 'dynamic'):
  config = resnet20_cpu.get_config()
  cci_schedules.apply(config, method, dense_workdir='runs/resnet20_cpu')
  return config
