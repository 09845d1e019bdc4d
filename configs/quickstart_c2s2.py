r"""Quickstart for C2S2: prune the channels of the quickstart ResNet-8 on the digits.

  python main.py --config=configs/quickstart_c2s2.py --workdir=/tmp/quickstart_c2s2

Starts from the finished quickstart run in /tmp/quickstart (configs/quickstart.py).
Expect: test top-1 1.000 on the 360 test digits; the three conv1 layers keep 9/16,
25/32 and 57/64 channels after 6 restores by the cost check (c2s2.jsonl); MACs 2.25M
of 3.06M (0.74), parameters 64,160 of 75,290; CPU latency at batch 128 0.90x the
original (odd widths on 16x16 images run no faster here); 62 s for the whole command
on the 2-core x86 CPU of this project's machines (measured 2026-11-22).
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
