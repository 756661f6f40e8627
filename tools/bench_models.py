"""CNNs outside the zoo that issue 21 measured, written as users write them, for ``tools/bench.py vgg
effnet``: a VGG-style CIFAR CNN (conv -> BN -> ReLU stacks between 2x2 max pools) and an
EfficientNet-style ImageNet CNN (MBConv blocks: 1x1 expand, depthwise 3x3, squeeze-excitation, 1x1
project, SiLU throughout).  Random weights; the benchmark captures them with torch.export."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VGG(nn.Module):
    """VGG-11's layout at CIFAR width and size: 7 convs, 4 max pools, one linear layer."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in (64, 64, "pool", 128, 128, "pool", 256, 256, "pool", 512, "pool"):
            if v == "pool":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512 * 2 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [_SqueezeExcite(mid, max(1, cin // 4)), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class EffNet(nn.Module):
    """EfficientNet-B0's first six stages (output channels, blocks, stride, expansion), a 1x1 head
    conv, global pooling and a linear classifier."""

    STAGES = ((16, 1, 1, 1), (24, 2, 2, 6), (40, 2, 2, 6), (80, 2, 2, 6), (112, 1, 1, 6), (192, 1, 2, 6))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU()]
        cin = 32
        for cout, blocks, stride, expand in self.STAGES:
            for i in range(blocks):
                layers.append(_MBConv(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 640, 1, bias=False), nn.BatchNorm2d(640), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(640, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def create(name: str) -> nn.Module:
    """The model ``name`` ('vgg' or 'effnet'), random weights, BatchNorm statistics spread as a trained
    model's are (not all zero means and unit variances), in eval mode."""
    torch.manual_seed(0)
    model = {"vgg": VGG, "effnet": EffNet}[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()
