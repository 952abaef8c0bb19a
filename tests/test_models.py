"""The tutorial's ANN/CNN/LSTM in PyTorch: exact parameter counts, every CNN shape, other input sizes, L2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raygenre.model.networks import (
    CNN,
    MODELS,
    TUTORIAL_DEFAULTS,
    MaxPoolSame,
    build_model,
    count_parameters,
    resolve_hparams,
    same_pool_padding,
)


def test_parameter_counts_match_the_tutorial() -> None:
    ann = build_model("ann", 130, 13, 10)
    assert count_parameters(ann) == 1_014_218  # 1690*512+512 + 512*256+256 + 256*64+64 + 64*10+10

    cnn = build_model("cnn", 130, 13, 10)
    assert count_parameters(cnn) == 45_322  # Keras "trainable params"
    running = sum(b.numel() for name, b in cnn.named_buffers() if "running_" in name)
    assert running == 192  # Keras "non-trainable params": BatchNorm moving mean/variance, 3 x 2 x 32

    lstm = build_model("lstm", 130, 13, 10)
    bias_hh = sum(p.numel() for name, p in lstm.named_parameters() if name.startswith("lstm.bias_hh"))
    assert bias_hh == 512  # PyTorch's second bias vector per gate, 2 layers x 4 gates x 64
    assert count_parameters(lstm) == 57_802 + 512 == 58_314


def test_tutorial_defaults_and_hparam_resolution() -> None:
    assert {m: TUTORIAL_DEFAULTS[m]["hidden"] for m in MODELS} == {"ann": 512, "cnn": 64, "lstm": 64}
    assert {m: TUTORIAL_DEFAULTS[m]["weight_decay"] for m in MODELS} == {"ann": 1e-3, "cnn": 0.0, "lstm": 0.0}
    assert resolve_hparams("ann", None, None) == (512, 1e-3)
    assert resolve_hparams("cnn", 32, 0.01) == (32, 0.01)
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        resolve_hparams("gru", None, None)
    with pytest.raises(ValueError, match="choose one of ann, cnn, lstm"):
        build_model("transformer", 130, 13, 10)


def test_ann_hidden_widths_follow_hidden() -> None:
    ann = build_model("ann", 130, 13, 10, hidden=128)
    widths = [layer.out_features for layer in ann.modules() if isinstance(layer, nn.Linear)]
    assert widths == [128, 64, 16, 10]
    assert [layer.out_features for layer in build_model("ann", 130, 13, 10).modules()
            if isinstance(layer, nn.Linear)] == [512, 256, 64, 10]


def test_cnn_intermediate_shapes_at_the_defaults() -> None:
    cnn = build_model("cnn", 130, 13, 10)
    assert isinstance(cnn, CNN)
    seen: list[tuple[int, ...]] = []
    for block in cnn.blocks:
        conv, _relu, pool, bn = block
        assert isinstance(conv, nn.Conv2d) and isinstance(pool, MaxPoolSame) and isinstance(bn, nn.BatchNorm2d)
        for layer in (conv, pool):
            layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[1:])))
    out = cnn(torch.randn(2, 130, 13))
    # torch is (C, H, W); the tutorial's Keras shapes are (H, W, C)
    hwc = [(h, w, c) for c, h, w in seen]
    assert hwc == [(128, 11, 32), (64, 6, 32), (62, 4, 32), (31, 2, 32), (30, 1, 32), (15, 1, 32)]
    assert cnn.flat_features == 480 and cnn.dense.in_features == 480 and cnn.dense.out_features == 64
    assert out.shape == (2, 10)
    assert [b[0].kernel_size for b in cnn.blocks] == [(3, 3), (3, 3), (2, 2)]


def test_keras_same_pool_padding() -> None:
    assert same_pool_padding(128, 3, 2) == (0, 1)  # -> 64
    assert same_pool_padding(11, 3, 2) == (1, 1)  # -> 6
    assert same_pool_padding(62, 3, 2) == (0, 1)  # -> 31
    assert same_pool_padding(4, 3, 2) == (0, 1)  # -> 2
    assert same_pool_padding(30, 2, 2) == (0, 0)  # -> 15
    assert same_pool_padding(1, 2, 2) == (0, 1)  # -> 1
    # padding is -inf, never 0: an all-negative map keeps its (negative) maxima
    x = -torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    out = MaxPoolSame(2, 2)(x)
    assert out.shape == (1, 1, 2, 2)
    assert torch.equal(out, torch.tensor([[[[-1.0, -3.0], [-7.0, -9.0]]]]))


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name: str) -> None:
    model = build_model(name, 130, 13, 10)
    assert model(torch.randn(5, 130, 13)).shape == (5, 10)
    model.eval()
    assert model(torch.randn(1, 130, 13)).shape == (1, 10)


@pytest.mark.parametrize("name", MODELS)
def test_other_segment_lengths_and_coefficients(name: str) -> None:
    model = build_model(name, 87, 20, 5, hidden=32, dropout=0.1)  # 2 s segments, 20 MFCC, 5 genres
    assert model(torch.randn(3, 87, 20)).shape == (3, 5)
    if name == "cnn":
        # (85,18) -> (43,9) | (41,7) -> (21,4) | (20,3) -> (10,2): 10*2*32 = 640
        assert model.flat_features == 640
    if name == "ann":
        assert model.dense[0].in_features == 87 * 20


def test_cnn_rejects_inputs_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        build_model("cnn", 130, 3, 10)


@pytest.mark.parametrize("name", MODELS)
def test_l2_penalty_is_the_sum_of_squared_hidden_dense_kernels(name: str) -> None:
    model = build_model(name, 130, 13, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hidden = linears[:-1]  # the tutorial regularised the hidden Dense layers, not the softmax output
    expected = sum(float(m.weight.detach().pow(2).sum()) for m in hidden)
    penalty = model.l2_penalty()
    assert penalty.ndim == 0
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    assert all(m.weight.grad is not None for m in hidden)
    assert linears[-1].weight.grad is None  # output layer not regularised
    assert all(m.bias.grad is None for m in linears)  # kernels only, no biases


def test_keras_initialisation() -> None:
    lstm = build_model("lstm", 130, 13, 10)
    bias_ih = lstm.lstm.bias_ih_l0.detach()
    assert torch.equal(bias_ih[64:128], torch.ones(64))  # unit_forget_bias
    assert torch.equal(bias_ih[:64], torch.zeros(64))
    assert torch.equal(lstm.lstm.bias_hh_l0.detach(), torch.zeros(256))
    ann = build_model("ann", 130, 13, 10)
    assert all(not m.bias.detach().any() for m in ann.modules() if isinstance(m, nn.Linear))


def test_seeded_builds_are_identical() -> None:
    torch.manual_seed(3)
    a = build_model("cnn", 130, 13, 10)
    torch.manual_seed(3)
    b = build_model("cnn", 130, 13, 10)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
