# Copyright 2020 Hang Zhang (ResNeSt: Split-Attention Networks, https://github.com/zhanghang1989/ResNeSt)
# and the Alibaba DAMO Academy authors of modelscope/models/cv/animal_recognition (resnet.py, splat.py).
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in
# compliance with the License. You may obtain a copy of the License at
# http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License is
# distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# Modified for wwts: only the variant ModelScope's general recognition model uses (split attention with
# radix >= 1, no dilation, no DropBlock, no rectified convolutions, no final dropout), written anew;
# the state-dict keys and the forward computation are the originals' (tests/test_recogniser_resnest.py
# checks both against the installed modelscope package's classes).
"""ResNeSt, the split-attention ResNet (Zhang et al. 2020, arXiv:2004.08955), as ModelScope's
general recognition model (``damo/cv_resnest101_general_recognition``, 万物识别) defines it.

Ported rather than imported: ``modelscope.models.cv.animal_recognition`` is importable only through
the ``modelscope`` package, whose ``__init__`` pulls its framework (``addict`` and more) and whose
pipeline needs torchvision and OpenCV, none of which wwts otherwise needs; the model itself is two
small files of plain torch.

``resnest101(num_classes)`` is ModelScope's ``GeneralRecognitionPipeline.resnest101``: blocks
``[3, 4, 23, 3]``, ``radix=2``, ``groups=1``, ``bottleneck_width=64``, deep stem of width 64,
average-pool downsampling, average-pool stride in the block (after the split-attention conv).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResNeSt", "resnest101", "FEATURE_DIM"]

#: Width of the pooled feature before the classifier (512 * Bottleneck expansion 4).
FEATURE_DIM = 2048


class SplitAttentionConv(nn.Module):
    """``radix`` grouped 3x3 convolutions whose outputs are mixed by a per-channel softmax attention
    computed from their pooled sum (splat.py's ``SplAtConv2d`` with ``norm_layer=BatchNorm2d``).

    Shapes: ``(B, C_in, H, W)`` → ``(B, channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, radix: int, groups: int,
                 reduction_factor: int = 4) -> None:
        super().__init__()
        inter = max(in_channels * radix // reduction_factor, 32)
        self.radix, self.groups = radix, groups
        self.conv = nn.Conv2d(in_channels, channels * radix, 3, stride, 1, groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.conv(x)))
        batch, width = x.shape[:2]
        splits = torch.split(x, width // self.radix, dim=1) if self.radix > 1 else (x,)
        gap = F.adaptive_avg_pool2d(sum(splits), 1)
        attention = self.fc2(self.relu(self.bn1(self.fc1(gap))))
        if self.radix > 1:  # softmax over the radix splits, per cardinal group (splat.py rSoftMax)
            attention = attention.view(batch, self.groups, self.radix, -1).transpose(1, 2)
            attention = F.softmax(attention, dim=1).reshape(batch, -1)
        else:
            attention = torch.sigmoid(attention)
        attention = attention.view(batch, -1, 1, 1)
        weights = torch.split(attention, width // self.radix, dim=1) if self.radix > 1 else (attention,)
        return sum(w * s for w, s in zip(weights, splits)).contiguous()


class Bottleneck(nn.Module):
    """1x1 reduce → split-attention 3x3 (then a 3x3 average pool for the stride, ``avd``) → 1x1
    expand by 4, plus the shortcut (resnet.py's ``Bottleneck``, ``avd_first=False``)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, *, radix: int,
                 groups: int, bottleneck_width: int, avd: bool, is_first: bool) -> None:
        super().__init__()
        width = int(planes * (bottleneck_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.avd = avd and (stride > 1 or is_first)
        if self.avd:
            self.avd_layer = nn.AvgPool2d(3, stride, padding=1)
            stride = 1
        self.conv2 = SplitAttentionConv(width, width, stride, radix, groups)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avd:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNeSt(nn.Module):
    """ResNeSt with a deep stem and average-pool downsampling (resnet.py's ``ResNet`` with
    ``deep_stem=True, avg_down=True``).

    ``forward``: ``(B, 3, H, W)`` float32 → ``(B, num_classes)`` logits; ``features``: → the
    ``(B, 2048)`` pooled feature the classifier ``fc`` reads.
    """

    def __init__(self, layers: tuple[int, ...] | list[int], num_classes: int, *, radix: int = 2, groups: int = 1,
                 bottleneck_width: int = 64, stem_width: int = 64, avd: bool = True) -> None:
        super().__init__()
        self.block_args = dict(radix=radix, groups=groups, bottleneck_width=bottleneck_width, avd=avd)
        self.inplanes = stem_width * 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width * 2, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, layers[0], 1, is_first=False)
        self.layer2 = self._layer(128, layers[1], 2)
        self.layer3 = self._layer(256, layers[2], 2)
        self.layer4 = self._layer(512, layers[3], 2)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():  # resnet.py's initialisation (He normal, BatchNorm at identity)
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _layer(self, planes: int, blocks: int, stride: int, is_first: bool = True) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self.inplanes, out, 1, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, is_first=is_first, **self.block_args)]
        self.inplanes = out
        layers += [Bottleneck(out, planes, 1, None, is_first=False, **self.block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, 2048)`` globally average-pooled feature."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnest101(num_classes: int = 54092) -> ResNeSt:
    """ResNeSt-101 as ModelScope's general recognition pipeline builds it (54,092 classes there)."""
    return ResNeSt([3, 4, 23, 3], num_classes, radix=2, groups=1, bottleneck_width=64, stem_width=64, avd=True)
