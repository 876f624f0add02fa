"""The DenseNet-BC face CNN ("Denseface"), with frozen blocks and activation checkpointing.

Module names follow the original Denseface model, so its state dicts load unchanged; its
checkpoints are written and read by :mod:`memotrain.checkpoint`. Architecture, pooled features,
freezing and checkpointing: docs/TRAINER.md "The face CNN".
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from memodb.errors import MemoError
from memotrain.config import ConfigError

FACE_KIND = "face-cnn"  # the "kind" of a face CNN checkpoint (memotrain.checkpoint)
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt")  # the order of the Denseface `pred` / soft_labels


class InputError(MemoError, ValueError):
    """A batch does not fit the model (the face CNN or :class:`memotrain.model.MemoBert`):
    shapes, lengths or token ids."""


def feature_block(name: str, n_blocks: int = 3) -> int:
    """The block whose pooled output a feature name means: ``trans1`` 1, ``trans2`` 2, ...,
    ``feat`` the last block (the Denseface h5 dataset names)."""
    if name == "feat":
        return n_blocks
    if name.startswith("trans") and name[5:].isdigit() and 1 <= int(name[5:]) < n_blocks:
        return int(name[5:])
    names = [f"trans{i}" for i in range(1, n_blocks)] + ["feat"]
    raise ConfigError(f"unknown face feature {name!r} (choose one of {', '.join(names)})")


def _batch_norm(norm: nn.BatchNorm2d, x: torch.Tensor, update_stats: bool) -> torch.Tensor:
    """``norm(x)``; with ``update_stats=False`` in training: the same batch-statistics
    normalisation leaving the running statistics as they are (momentum 0, no batch counted),
    for a checkpoint's recomputation (which must save the same tensors as the first pass)."""
    if update_stats or not norm.training:
        return norm(x)
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, True,
                        0.0, norm.eps)


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv: ``growth`` new channels from the
    concatenation of every earlier output of the block."""

    def __init__(self, c_in: int, growth: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def new_features(self, *prev: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        x = torch.cat(prev, 1) if len(prev) > 1 else prev[0]
        x = self.conv1(self.relu1(_batch_norm(self.norm1, x, update_stats)))
        x = self.conv2(self.relu2(_batch_norm(self.norm2, x, update_stats)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x

    def forward(self, prev: list, checkpointed: bool = False) -> torch.Tensor:
        if not checkpointed:
            return self.new_features(*prev)
        calls = []

        def run(*xs):  # first call: the forward pass; second: the backward's recomputation
            calls.append(None)
            return self.new_features(*xs, update_stats=len(calls) == 1)

        return checkpoint(run, *prev, use_reentrant=False)  # RNG (dropout) state preserved


class _DenseBlock(nn.Module):
    def __init__(self, n_layers: int, c_in: int, growth: int, bn_size: int, drop_rate: float):
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(c_in + i * growth, growth, bn_size, drop_rate))

    def forward(self, x: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
        outs = [x]
        for layer in self.children():
            outs.append(layer(outs, checkpointed))
        return torch.cat(outs, 1)


class _Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(c_in))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(c_in, c_out, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, stride=2))


class DenseNetBC(nn.Module):
    """DenseNet-BC for ``image_size`` x ``image_size`` gray face crops; see
    docs/TRAINER.md "The face CNN". Inputs are normalised crops, ``(N, S, S)`` or ``(N, 1, S, S)``.

    ``normalization`` ({"mean", "std"} of the training pixels on the 0..255 scale, or None)
    and ``classes`` (class names, or None) are plain attributes that travel with the
    checkpoint (:func:`save_face_cnn` / :func:`load_face_cnn`).
    """

    def __init__(self, growth: int = 12, blocks=(16, 16, 16), init_features: int = 24,
                 compression: float = 0.5, bn_size: int = 4, n_classes: int = 8,
                 drop_rate: float = 0.0, image_size: int = 64, frozen_blocks: int = 0,
                 checkpoint_activations: bool = False):
        super().__init__()
        blocks = tuple(blocks)
        positive = {"growth": growth, "init_features": init_features, "bn_size": bn_size}
        for name, v in positive.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"face CNN: {name} must be a positive integer, not {v!r}")
        if not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ConfigError(f"face CNN: blocks must be layer counts >= 1, not {blocks!r}")
        if not 0 < compression <= 1:
            raise ConfigError(f"face CNN: compression must be in (0, 1], not {compression!r}")
        if not 0 <= drop_rate < 1:
            raise ConfigError(f"face CNN: drop_rate must be in [0, 1), not {drop_rate!r}")
        if not isinstance(n_classes, int) or n_classes < 0:
            raise ConfigError(f"face CNN: n_classes must be >= 0 (0: no classifier), not "
                              f"{n_classes!r}")
        reduction = 2 ** len(blocks)  # stem stride 2, one 2x2 pool per transition
        if not isinstance(image_size, int) or image_size < reduction or image_size % reduction:
            raise ConfigError(f"face CNN: image_size must be a multiple of {reduction} for "
                              f"{len(blocks)} blocks, not {image_size!r}")
        self.config = {"growth": growth, "blocks": list(blocks), "init_features": init_features,
                       "compression": float(compression), "bn_size": bn_size,
                       "n_classes": n_classes, "drop_rate": float(drop_rate),
                       "image_size": image_size}
        self.image_size = image_size
        self.checkpoint_activations = bool(checkpoint_activations)
        self.normalization: dict | None = None
        self.classes: list | None = None

        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(1, init_features, kernel_size=3, stride=2,
                                                    padding=1, bias=False))
        c = init_features
        widths = []
        for i, n_layers in enumerate(blocks, 1):
            self.features.add_module(f"denseblock{i}",
                                     _DenseBlock(n_layers, c, growth, bn_size, drop_rate))
            c += n_layers * growth
            widths.append(c)
            if i < len(blocks):
                self.features.add_module(f"transition{i}", _Transition(c, int(c * compression)))
                c = int(c * compression)
        self.features.add_module(f"norm{len(blocks)}", nn.BatchNorm2d(c))
        self.features.add_module(f"relu{len(blocks)}", nn.ReLU(inplace=True))
        #: pooled feature width after each block: (216, 300, 342) by default
        self.block_channels = tuple(widths)
        self.feature_dim = c
        self.classifier = nn.Linear(c, n_classes) if n_classes else None

        for m in self.modules():  # as the original
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self.frozen_blocks = 0
        self.set_frozen_blocks(frozen_blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.block_channels)

    def describe(self) -> str:
        c = self.config
        return (f"growth {c['growth']}, blocks {'/'.join(map(str, c['blocks']))}, "
                f"{c['init_features']} initial features, compression {c['compression']}, "
                f"{c['n_classes']} classes, {c['image_size']}x{c['image_size']} input")

    # -- freezing ---------------------------------------------------------------------------

    def _stage(self, i: int) -> list:
        """Modules of stage ``i``: 0 the stem, ``i`` >= 1 block ``i`` and what follows it."""
        f = self.features
        if i == 0:
            return [f.conv0]
        tail = (getattr(f, f"transition{i}") if i < self.n_blocks
                else getattr(f, f"norm{self.n_blocks}"))
        return [getattr(f, f"denseblock{i}"), tail]

    def frozen_modules(self) -> list:
        return [m for i in range(self.frozen_blocks + 1 if self.frozen_blocks else 0)
                for m in self._stage(i)]

    def set_frozen_blocks(self, k: int) -> None:
        """Freeze the stem and the first ``k`` stages (0: nothing); unfreeze the rest."""
        if not isinstance(k, int) or not 0 <= k <= self.n_blocks:
            raise ConfigError(f"face CNN: frozen_blocks must be 0 to {self.n_blocks}, not {k!r}")
        self.frozen_blocks = k
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) not in frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()  # batch-norm statistics of frozen blocks never move
        return self

    def trainable_parameters(self) -> list:
        """The parameters an optimizer may see: everything not frozen."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- forward ----------------------------------------------------------------------------

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        s = self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise InputError(f"the face CNN takes gray {s}x{s} crops, (N, {s}, {s}) or "
                             f"(N, 1, {s}, {s}); got shape {tuple(x.shape)} (fix: build the "
                             f"raw-crop database with --size {s})")
        return x

    def features_of(self, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """Globally average-pooled features after ``block`` (1-based; None: the last):
        ``(N, block_channels[block - 1])``."""
        block = self.n_blocks if block is None else block
        if not 1 <= block <= self.n_blocks:
            raise InputError(f"block must be 1 to {self.n_blocks}, not {block}")
        f = self.features
        x = self._images(x)
        for i in range(1, block + 1):
            frozen = i <= self.frozen_blocks
            with torch.no_grad() if frozen else contextlib.nullcontext():
                if i == 1:
                    x = f.conv0(x)
                ckpt = (self.checkpoint_activations and not frozen and self.training
                        and torch.is_grad_enabled())
                x = getattr(f, f"denseblock{i}")(x, ckpt)
                if i < self.n_blocks:
                    t = getattr(f, f"transition{i}")
                    h = t.relu(t.norm(x))
                    if i < block:
                        x = t.pool(t.conv(h))
                else:
                    h = getattr(f, f"relu{i}")(getattr(f, f"norm{i}")(x))
        return h.mean(dim=(2, 3))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame encodings for the joint model: ``(N, feature_dim)`` (342), the ``feat``."""
        return self.features_of(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)``."""
        if self.classifier is None:
            raise InputError("this face CNN has no classifier (n_classes 0); use encode()")
        return self.classifier(self.features_of(x))
