r"""Quickstart for CCI: ResNet-8 on the embedded digits, 2 of 8 with the dynamic algorithm.

  python main.py --config=configs/quickstart_cci.py --workdir=/tmp/quickstart_cci

Expect: MEASURE_TOP1 test top-1 at density MEASURE_DENSITY in MEASURE_TIME of wall time
(2-core x86 CPU, no accelerator). `:oneshot` and `:gradual` (appended to the config path)
fine-tune the finished quickstart run in /tmp/quickstart instead.
"""

from configs import cci_schedules, quickstart


def get_config(method: str = 'dynamic'):
  config = quickstart.get_config()
  cci_schedules.apply(config, method, dense_workdir='/tmp/quickstart')
  return config
