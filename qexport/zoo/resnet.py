"""ResNets: resnet20 in the CIFAR layout (He et al. 2016, 3 stages of 16/32/64 channels, 1x1-conv
shortcut where the shape changes) and resnet18 in the ImageNet layout."""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, stem: nn.Module, widths: list[int], blocks: list[int], num_classes: int, cin: int) -> None:
        super().__init__()
        self.stem = stem
        layers = []
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stage = []
            for j in range(count):
                stage.append(BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def resnet20(num_classes: int = 10) -> ResNet:
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    return ResNet(stem, [16, 32, 64], [3, 3, 3], num_classes, 16)


def resnet18(num_classes: int = 1000) -> ResNet:
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )
    return ResNet(stem, [64, 128, 256, 512], [2, 2, 2, 2], num_classes, 64)
