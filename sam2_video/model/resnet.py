"""ResNet-18 / ResNet-50 in plain torch, with torchvision's state-dict key names.

The first convolution may take extra input channels (STCN's value encoder feeds RGB + masks);
`load_torchvision_weights` loads an ImageNet checkpoint of torchvision's `resnet18`/`resnet50`
into such a network, with zero weights for the extra channels as STCN does.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# blocks per stage
_DEPTHS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, as torchvision v1.5), 1x1 convs with 4x expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """ResNet trunk without the classifier: stem (conv1, bn1, maxpool) and `num_stages` stages.

    `forward(x [B, in_channels, H, W])` returns the stage outputs, finest first: stage i has stride
    4 * 2**i and `out_channels[i]` channels (ResNet-50: 256, 512, 1024, 2048; ResNet-18: 64 ... 512).
    """

    def __init__(self, depth: int, in_channels: int = 3, num_stages: int = 4) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be 1..4, got {num_stages}")
        block = BasicBlock if depth == 18 else Bottleneck
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = 64
        self.out_channels: list[int] = []
        for index, num_blocks in enumerate(_DEPTHS[depth][:num_stages]):
            planes = 64 * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(block(in_planes, planes, stride if block_index == 0 else 1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self.out_channels.append(in_planes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for index in range(len(self.out_channels)):
            x = getattr(self, f"layer{index + 1}")(x)
            features.append(x)
        return features

    def load_torchvision_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load torchvision `resnet{18,50}` weights (ImageNet). The classifier (`fc.*`) and stages this
        network does not build are skipped; extra input channels of conv1 get zero weights.
        Raises ValueError naming missing or mismatched keys."""
        own = self.state_dict()
        missing = sorted(k for k in own if k not in state_dict)
        if missing:
            raise ValueError(f"ResNet weights lack {len(missing)} keys, e.g. {missing[:3]} (wrong depth?)")
        loaded = {}
        for key, target in own.items():
            value = state_dict[key]
            if key == "conv1.weight" and value.shape[1] < target.shape[1]:
                extra = value.new_zeros(value.shape[0], target.shape[1] - value.shape[1], *value.shape[2:])
                value = torch.cat([value, extra], dim=1)
            if value.shape != target.shape:
                raise ValueError(f"ResNet weight {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            loaded[key] = value
        self.load_state_dict(loaded, strict=True)
