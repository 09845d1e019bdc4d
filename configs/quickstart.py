r"""Quickstart: ResNet-8 on scikit-learn's handwritten digits, no download.

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart

Expect: test top-1 0.997 on the 360 test digits (300 training digits are held out,
never trained on: data.held_out), 14 s of wall time for the whole command (8 s in the
training loop; 525 steps), on the 2-core x86 CPU of this project's machines, no
accelerator (measured 2026-11-22 with the command above).
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.name = 'resnet8'
  config.data.source = 'digits'
  config.data.image_size = 16
  config.data.crop_padding = 2
  config.data.flip = False  # Mirrored digits are other symbols.
  config.data.held_out = 300  # Never trained on: C2S2's cost check uses them.
  config.batch_size = 32
  config.eval_batch_size = 120
  config.num_epochs = 15.0
  config.optimizer.learning_rate = 0.05
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 20
  config.checkpoint_every_steps = 100
  return config
