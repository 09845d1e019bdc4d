r"""VGG-16 (batch norm) on CIFAR-10 with C2S2 channel selection, accelerator schedule.

  python main.py --config=configs/vgg_c2s2.py --workdir=runs/vgg16_c2s2

Expect: not run here (13 prunable convs x 1.5 epochs plus a 40-epoch fine-tune; about
26 minutes per VGG epoch on the 2-core CPU). Starts from a dense VGG run in
runs/vgg16_dense (configs/vgg16_dense.py with --config.data.held_out=5000).
"""

from configs import c2s2_schedules, vgg16_dense


def get_config():
  config = vgg16_dense.get_config()
  c2s2_schedules.apply(config, dense_workdir='runs/vgg16_dense')
  return config
