"""The deterministic U-Net: PGRD's prior pi_phi (paper Fig. 1a, Sec. III-B) and the baselines' backbone.

A thin layer over ``monai.networks.nets.UNet`` so that every method (PGRD's prior, the deterministic
baseline, MC Dropout, Deep Ensembles) shares one tested network with one configuration format.

Dropout sits on the decoder (the up path) only: MC Dropout then samples the reconstruction of the
segmentation while the encoder's features stay deterministic, and the encoder of a dropout-free
checkpoint and a dropout one are the same network.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet as _MonaiUNet
from torch import Tensor, nn

from .checks import check_batch


class _DecoderDropoutUNet(_MonaiUNet):
    """MONAI's UNet with its ``dropout`` applied on the up path only (MONAI puts it everywhere)."""

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        # The bottleneck is built by _get_down_layer too: it stays dropout-free with the encoder.
        keep, self.dropout = self.dropout, 0.0
        try:
            return super()._get_down_layer(in_channels, out_channels, strides, is_top)
        finally:
            self.dropout = keep


class UNet(nn.Module):
    """A 2D/3D U-Net returning class logits (B, C, *S) for an image (B, Cin, *S).

    Each spatial size must be a multiple of the product of ``strides`` (checked, raises InputError).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence[int] = (2, 2, 2, 2),
                 num_res_units: int = 2, dropout: float = 0.0):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if num_classes < 2:
            raise ValueError("num_classes counts the background too: at least 2")
        if len(strides) != len(channels) - 1:
            raise ValueError("strides needs one entry per downsampling: len(channels) - 1")
        self.spatial_dims, self.in_channels = int(spatial_dims), int(in_channels)
        self.num_classes = int(num_classes)
        self.channels, self.strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
        self.num_res_units, self.dropout = int(num_res_units), float(dropout)
        self.net = _DecoderDropoutUNet(
            spatial_dims=self.spatial_dims, in_channels=self.in_channels, out_channels=self.num_classes,
            channels=self.channels, strides=self.strides, num_res_units=self.num_res_units,
            dropout=self.dropout)
        self._loss = DiceCELoss(softmax=True, to_onehot_y=True)

    # -- configuration -----------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """Every hyperparameter needed to rebuild the network (JSON-serialisable)."""
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "channels": list(self.channels),
                "strides": list(self.strides), "num_res_units": self.num_res_units,
                "dropout": self.dropout}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "UNet":
        return cls(**cfg)

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this (the total downsampling)."""
        m = 1
        for s in self.strides:
            m *= s
        return m

    # -- checks ------------------------------------------------------------------------------------
    def check_input(self, image: Tensor, labels: Tensor | None = None) -> None:
        """Raise InputError for an image (and labels) this network cannot take, before any work."""
        check_batch(image, labels, spatial_dims=self.spatial_dims, in_channels=self.in_channels,
                    num_classes=self.num_classes, size_multiple=self.size_multiple)

    # -- use ---------------------------------------------------------------------------------------
    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    def predict_proba(self, image: Tensor) -> Tensor:
        """Class probabilities softmax(logits) over the channel dimension."""
        return torch.softmax(self(image), dim=1)

    def loss(self, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Dice + cross-entropy (MONAI DiceCELoss) on integer labels (B, *S)."""
        self.check_input(image, labels)
        total = self._loss(self(image), labels.long().unsqueeze(1))
        return {"loss": total}

    def enable_mc_dropout(self) -> "UNet":
        """Eval mode everywhere except the dropout layers (MC Dropout sampling at test time)."""
        self.eval()
        for m in self.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        return self


def from_config(cfg: dict[str, Any]) -> UNet:
    """Module-level constructor, symmetric with the method modules."""
    return UNet.from_config(dict(cfg))
