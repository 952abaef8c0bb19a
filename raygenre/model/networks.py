"""The tutorial's three genre classifiers (ANN, CNN, LSTM), rewritten from Keras in plain PyTorch.

Every model takes standardised MFCC segments ``x``: float32 (B, frames, n_mfcc), and returns logits
(B, n_genres); softmax is applied by the loss (training) or by ``LoadedModel.predict_proba`` (inference).
Layer shapes derive from (frames, n_mfcc), so other segment lengths or coefficient counts work.

Faithful to the Keras originals where it matters:

* the same layers, widths and parameter counts (ANN 1,014,218; CNN 45,322 trainable + 192 BatchNorm
  running statistics; LSTM 57,802 in Keras, 58,314 here: see ``LSTM``);
* Keras initialisation (Glorot-uniform kernels, zero biases, orthogonal recurrent kernels, forget-gate bias 1),
  Keras ``"same"`` max-pooling and Keras' BatchNorm ``epsilon=1e-3``. BatchNorm momentum is PyTorch's 0.1 by
  default (``bn_momentum``; Keras' 0.99 is 0.01 here): with 0.01 the running statistics need hundreds of steps
  to forget their initial values, and the eval-mode CNN sat at chance on small tables. Training recomputes
  the statistics over the train split anyway (``raygenre.training.train.recompute_batchnorm``);
* L2 regularisation as the tutorial wrote it (``kernel_regularizer=l2(wd)``): ``wd * sum(w**2)`` over the
  kernels of the hidden dense layers, added to the loss (``l2_penalty``), not decoupled AdamW decay.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODELS: tuple[str, ...] = ("ann", "cnn", "lstm")

# The tutorial's values, used wherever the config says ``null``.
TUTORIAL_DEFAULTS: dict[str, dict[str, float]] = {
    "ann": {"hidden": 512, "weight_decay": 1e-3},
    "cnn": {"hidden": 64, "weight_decay": 0.0},
    "lstm": {"hidden": 64, "weight_decay": 0.0},
}


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases; LSTM: orthogonal recurrent kernels, forget bias 1."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTM):
            for name, p in m.named_parameters():
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(p)  # Keras: one (in, 4h) kernel for the 4 gates
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(p)
                else:
                    nn.init.zeros_(p)
                    if name.startswith("bias_ih"):
                        p.data.chunk(4, 0)[1].fill_(1.0)  # gate order i, f, g, o: Keras unit_forget_bias


def _l2(layers: list[nn.Linear]) -> torch.Tensor:
    return sum(layer.weight.pow(2).sum() for layer in layers)  # type: ignore[return-value]


class ANN(nn.Module):
    """Multilayer perceptron: flatten -> Dense h -> Dense h/2 -> Dense h/8 -> Dense n_genres (ReLU, dropout)."""

    def __init__(self, frames: int, n_mfcc: int, n_genres: int, hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        widths = [frames * n_mfcc, hidden, hidden // 2, hidden // 8]
        if min(widths) < 1:
            raise ValueError(f"ann: hidden={hidden} is too small (needs hidden >= 8)")
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(widths[-1], n_genres)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.dense:
            x = self.dropout(F.relu(layer(x)))
        return self.out(x)

    def l2_penalty(self) -> torch.Tensor:
        """sum(w**2) over the hidden dense kernels (the layers the tutorial regularised; not the output)."""
        return _l2(list(self.dense))


def same_pool_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow ``padding="same"``: (before, after) so that out = ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MaxPoolSame(nn.Module):
    """``keras.layers.MaxPool2D(kernel, strides=stride, padding="same")``: pads with -inf, extra on the end."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pool_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_pool_padding(x.shape[-1], self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)

    def out_size(self, size: int) -> int:
        return math.ceil(size / self.stride)


class CNN(nn.Module):
    """Three blocks Conv2d(32) -> ReLU -> MaxPool("same") -> BatchNorm, then Dense hidden -> Dense n_genres.

    The segment is one channel of a (frames x n_mfcc) image. At the defaults (130 x 13) the blocks give
    (H x W x C) 128x11x32 -> 64x6x32 | 62x4x32 -> 31x2x32 | 30x1x32 -> 15x1x32, flattened to 480.
    """

    SPEC = ((3, 3, 2), (3, 3, 2), (2, 2, 2))  # (conv kernel, pool kernel, pool stride) per block

    def __init__(self, frames: int, n_mfcc: int, n_genres: int, hidden: int = 64, dropout: float = 0.3,
                 channels: int = 32, bn_momentum: float = 0.1):
        super().__init__()
        blocks = []
        h, w, c_in = frames, n_mfcc, 1
        for conv_k, pool_k, pool_s in self.SPEC:
            h, w = h - conv_k + 1, w - conv_k + 1
            if h < 1 or w < 1:
                raise ValueError(f"cnn: input {frames}x{n_mfcc} is too small for its 3 conv blocks "
                                 f"(needs at least about 14 frames x 7 coefficients)")
            pool = MaxPoolSame(pool_k, pool_s)
            h, w = pool.out_size(h), pool.out_size(w)
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, channels, conv_k), nn.ReLU(), pool,
                nn.BatchNorm2d(channels, eps=1e-3, momentum=bn_momentum),  # Keras: eps 1e-3, momentum 0.99 (=0.01)
            ))
            c_in = channels
        self.blocks = nn.ModuleList(blocks)
        self.flat_features = h * w * channels
        self.dense = nn.Linear(self.flat_features, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_genres)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # (B, 1, frames, n_mfcc): channel-first
        for block in self.blocks:
            x = block(x)
        x = self.dropout(F.relu(self.dense(x.flatten(1))))
        return self.out(x)

    def l2_penalty(self) -> torch.Tensor:
        """sum(w**2) over the hidden dense kernel (the output layer is not regularised, as in the tutorial)."""
        return _l2([self.dense])


class LSTM(nn.Module):
    """LSTM(hidden, sequences) -> LSTM(hidden) -> Dense hidden -> Dropout -> Dense n_genres.

    Parameters: Keras counts 57,802 at the defaults; PyTorch has 58,314, because each LSTM layer keeps two
    bias vectors per gate (``bias_ih`` and ``bias_hh``, 4 x 64 each) where Keras keeps one: 2 layers x 256 =
    512 more. The two biases are only ever summed, so the model is otherwise the same.
    """

    def __init__(self, frames: int, n_mfcc: int, n_genres: int, hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.lstm = nn.LSTM(n_mfcc, hidden, num_layers=2, batch_first=True)  # two stacked layers, as Keras
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_genres)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm(x)  # (B, frames, hidden): the second layer's outputs
        x = self.dropout(F.relu(self.dense(seq[:, -1])))  # last time step = Keras return_sequences=False
        return self.out(x)

    def l2_penalty(self) -> torch.Tensor:
        """sum(w**2) over the hidden dense kernel (the output layer is not regularised, as in the tutorial)."""
        return _l2([self.dense])


_CLASSES: dict[str, type[nn.Module]] = {"ann": ANN, "cnn": CNN, "lstm": LSTM}


def build_model(name: str, frames: int, n_mfcc: int, n_genres: int, hidden: int | None = None,
                dropout: float = 0.3, bn_momentum: float = 0.1) -> nn.Module:
    """A fresh model by name (``ann``, ``cnn``, ``lstm``); ``hidden=None`` takes the tutorial's width.

    ``bn_momentum`` (PyTorch's convention: the weight of the newest batch) matters only for the CNN.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if hidden is None:
        hidden = int(TUTORIAL_DEFAULTS[name]["hidden"])
    if name == "cnn":
        return CNN(frames, n_mfcc, n_genres, hidden=hidden, dropout=dropout, bn_momentum=bn_momentum)
    return _CLASSES[name](frames, n_mfcc, n_genres, hidden=hidden, dropout=dropout)


def resolve_hparams(name: str, hidden: int | None, weight_decay: float | None) -> tuple[int, float]:
    """(hidden, weight_decay) with ``None`` replaced by the tutorial's value for this model."""
    if name not in TUTORIAL_DEFAULTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    d = TUTORIAL_DEFAULTS[name]
    return (int(d["hidden"]) if hidden is None else int(hidden),
            float(d["weight_decay"]) if weight_decay is None else float(weight_decay))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a wrapper that holds it as ``.module`` (DistributedDataParallel): what gets saved
    and regularised."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def count_parameters(model: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable) parameters, as Keras' ``model.summary()`` counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
