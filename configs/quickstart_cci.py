r"""Quickstart for CCI: ResNet-8 on the embedded digits, 2 of 8 with the dynamic algorithm.

  python main.py --config=configs/quickstart_cci.py --workdir=/tmp/quickstart_cci

Expect: test top-1 0.994 at density 0.254 (3.6x projected accelerator speedup), 16 s of
wall time for the whole command, on the 2-core x86 CPU of this project's machines, no
accelerator (measured 2026-11-22 with the command above). `:oneshot` and `:gradual`
(appended to the config path) fine-tune the finished quickstart run in /tmp/quickstart instead.
"""

from configs import cci_schedules, quickstart


def get_config(method: str = 'dynamic'):
  config = quickstart.get_config()
  cci_schedules.apply(config, method, dense_workdir='/tmp/quickstart')
  return config
