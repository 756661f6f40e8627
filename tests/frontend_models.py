"""Models as users bring them, for the front-end tests (tests/test_frontend.py): Hugging Face
transformers architectures built from small configs (random weights, no download) and models
written the way people write them (functional pooling, SiLU / Hardswish, squeeze-excitation,
transposed convs, upsampling, concatenated skips, nn.TransformerEncoderLayer).

Each builder returns (model, positional example inputs, keyword example inputs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Built = tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]


def _image(batch: int = 8, side: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, side, side)


# -- Hugging Face transformers ----------------------------------------------------------------------
def hf_bert() -> Built:
    import transformers as hf

    cfg = hf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)  # fmt: skip
    ids = torch.randint(0, 100, (8, 16))
    mask = torch.ones(8, 16, dtype=torch.long)
    mask[:4, 10:] = 0  # padded sequences: the mask matters
    return hf.BertForSequenceClassification(cfg).eval(), (ids,), {"attention_mask": mask}


def hf_vit() -> Built:
    import transformers as hf

    cfg = hf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=10)  # fmt: skip
    return hf.ViTForImageClassification(cfg).eval(), (_image(),), {}


def hf_resnet() -> Built:
    import transformers as hf

    cfg = hf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck",
                          num_labels=10)  # fmt: skip
    return hf.ResNetForImageClassification(cfg).eval(), (_image(),), {}


def hf_convnext() -> Built:
    import transformers as hf

    cfg = hf.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10)
    return hf.ConvNextForImageClassification(cfg).eval(), (_image(),), {}


def hf_mobilenetv2() -> Built:
    import transformers as hf

    cfg = hf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=10)
    return hf.MobileNetV2ForImageClassification(cfg).eval(), (_image(),), {}


# -- models written by users ------------------------------------------------------------------------
class UNet(nn.Module):
    """Two levels: strided-conv down, transposed-conv and nearest-upsample up, concatenated skips;
    a dense (per-pixel) output."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(32, 32, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv2d(64, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([self.up1(self.mid(e2)), e2], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d1), e1], dim=1))
        return self.head(d2)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // 4)
        self.fc2 = nn.Linear(channels // 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1).flatten(1)
        w = torch.sigmoid(self.fc2(F.silu(self.fc1(w))))
        return x * w[:, :, None, None]


class SECNN(nn.Module):
    """EfficientNet-style: SiLU and Hardswish, a depthwise conv, squeeze-excitation, pooled to 4x4."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = SqueezeExcite(16)
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.SiLU())
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pw(self.se(self.dw(x)) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


class EncoderStack(nn.Module):
    """nn.TransformerEncoderLayer x 2 over embedded tokens, mean-pooled, classified."""

    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(ids)).mean(dim=1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class CifarResNet(nn.Module):
    """A CIFAR ResNet that pools with F.adaptive_avg_pool2d (the functional form)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def user_unet() -> Built:
    return UNet().eval(), (_image(),), {}


def user_se_cnn() -> Built:
    return SECNN().eval(), (_image(),), {}


def user_encoder() -> Built:
    return EncoderStack().eval(), (torch.randint(0, 64, (8, 12)),), {}


def user_cifar_resnet() -> Built:
    return CifarResNet().eval(), (_image(),), {}


MODELS: dict[str, Callable[[], Built]] = {
    "hf-bert": hf_bert, "hf-vit": hf_vit, "hf-resnet": hf_resnet, "hf-convnext": hf_convnext,
    "hf-mobilenetv2": hf_mobilenetv2, "unet": user_unet, "se-cnn": user_se_cnn, "encoder": user_encoder,
    "cifar-resnet": user_cifar_resnet,
}  # fmt: skip
CONFIGS: dict[str, dict[str, Any]] = {
    "lsq-w8a8": {"weight": "lsq", "act": "lsq", "bits": 8},
    "lsq-w4a4": {"weight": "lsq", "act": "lsq", "bits": 4},
    "post-asq-w4a4": {"weight": "post", "act": "asq", "bits": 4},
    "nipq-mixed": {"weight": "nipq", "act": "nipq", "bits": 4, "learn_bits": True},
}
