r"""Quickstart for C2S2: prune the channels of the quickstart ResNet-8 on the digits.

  python main.py --config=configs/quickstart_c2s2.py --workdir=/tmp/quickstart_c2s2

Starts from the finished quickstart run in /tmp/quickstart (configs/quickstart.py).
Expect: MEASURE
"""

from configs import c2s2_schedules, quickstart


def get_config():
  config = quickstart.get_config()
  c2s2_schedules.apply(config, dense_workdir='/tmp/quickstart')
  config.channel_pruning.lambda_l1 = 0.3
  config.channel_pruning.phase1_epochs = 2.0
  config.channel_pruning.phase2_epochs = 1.0
  config.channel_pruning.latency_batch = 128
  config.log_every_steps = 20
  config.checkpoint_every_steps = 20
  return config
