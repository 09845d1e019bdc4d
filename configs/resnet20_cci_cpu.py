r"""ResNet-20, CCI 2 of 8, on the shared CIFAR-10 archive: a schedule for 2 CPU cores.

  python main.py --config=configs/resnet20_cci_cpu.py --workdir=runs/resnet20_cci_dynamic
  python main.py --config=configs/resnet20_cci_cpu.py:oneshot --workdir=runs/resnet20_cci_oneshot
  python main.py --config=configs/resnet20_cci_cpu.py:gradual --workdir=runs/resnet20_cci_gradual

`dynamic` trains from scratch on the dense `resnet20_cpu.py` schedule; `oneshot` and
`gradual` fine-tune its finished run in runs/resnet20_cpu (run that first).
Expect, at density 0.251 and 10.47M MACs (dense: 0.827 top-1, 40.55M MACs): dynamic
0.813 test top-1 in 34 min, oneshot 0.813 in 8 min, gradual 0.807 in 8 min (the last
two after the 32-minute dense run), on the 2-core x86 CPU of this project's machines, no
accelerator (measured 2026-11-22 with these commands; see docs/results.md).
"""

from configs import cci_schedules, resnet20_cpu


def get_config(method: str = 'dynamic'):
  config = resnet20_cpu.get_config()
  cci_schedules.apply(config, method, dense_workdir='runs/resnet20_cpu')
  return config
