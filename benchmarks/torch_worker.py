"""PyTorch's side of the side-by-side benchmarks, in its own process (imports torch only).

  python benchmarks/torch_worker.py resnet20 128

Builds the CIFAR ResNet of train/models/resnet_cifar.py (depth 6n+2, option-A
shortcuts: subsample and zero-pad; widths 16, 32, 64) in `channels_last`, with SGD
(Nesterov momentum 0.9, weight decay 1e-4) on random data, warms up, prints `ready`,
then answers each line read from stdin:

  step N      N training steps; prints a JSON list of their seconds
  matmul N    N float32 2048x2048 matmuls; prints a JSON list of their seconds

Run by benchmarks/pytorch_reference.py, which interleaves it with our step.
"""

import json
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
  """A basic block; option A zero-pads the subsampled shortcut."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.pad = stride, cout - cin

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.pad:
      shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
    return F.relu(y + shortcut)


class CifarResNet(nn.Module):

  def __init__(self, depth: int, num_classes: int = 10):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for stage, width in enumerate((16, 32, 64)):
      for block in range(n):
        blocks.append(Block(cin, width, 2 if stage and not block else 1))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(F.relu(self.bn(self.stem(x))))
    return self.head(x.mean((2, 3)))


def main() -> None:
  model_name, batch = sys.argv[1], int(sys.argv[2])
  torch.manual_seed(0)
  model = CifarResNet(int(model_name.removeprefix('resnet'))).to(
      memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                              weight_decay=1e-4)
  images = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (batch,))
  a = torch.randn(2048, 2048)

  def step() -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()

  work = {'step': step, 'matmul': lambda: torch.mm(a, a)}
  for fn in work.values():
    for _ in range(3):
      fn()
  print('ready', torch.__version__, torch.get_num_threads(), flush=True)
  for line in sys.stdin:
    name, count = line.split()
    seconds = []
    for _ in range(int(count)):
      start = time.perf_counter()
      work[name]()
      seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds), flush=True)


if __name__ == '__main__':
  main()
