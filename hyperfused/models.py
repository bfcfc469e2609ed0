"""Models of the training command: the paper's MLP, a deeper MLP, a small CNN and a character LSTM.

Every model maps a batch to logits whose last dimension is the number of classes, so one loss serves all:
cross-entropy over ``logits.reshape(-1, classes)`` against ``targets.reshape(-1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

MODELS = ("mlp", "deep-mlp", "cnn", "charrnn")


class MLP(nn.Sequential):
    """inputs-hidden-...-classes with tanh (the paper's MNIST MLP is 784-128-10); ``depth`` linear layers."""

    def __init__(self, inputs: int, classes: int, hidden: int = 128, depth: int = 2, bias: bool = True):
        layers, width = [], inputs
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden, bias=bias), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, classes, bias=bias))
        super().__init__(*layers)


class CNN(nn.Module):
    """Two 3x3 convolutions with ReLU and 2x2 pooling, then a linear classifier; square single-channel images."""

    def __init__(self, inputs: int, classes: int, hidden: int = 32, bias: bool = True):
        super().__init__()
        side = int(round(math.sqrt(inputs)))
        if side * side != inputs:
            raise ValueError(f"--model cnn needs square single-channel images; got {inputs} inputs")
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, hidden // 2, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(hidden // 2, hidden, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(hidden * (side // 4) ** 2, classes, bias=bias)

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 1, self.side, self.side)).flatten(1))


class CharRNN(nn.Module):
    """Embedding, a one-layer LSTM and a linear read-out: next-character logits at every position."""

    def __init__(self, vocab: int, hidden: int = 128, embed: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.lstm(self.embed(x))
        return self.out(h)


def default_model(data_name: str) -> str:
    return {"shakespeare": "charrnn"}.get(data_name, "mlp")


def make_model(name: str, inputs: int, classes: int, hidden: int = 128, bias: bool = True,
               depth: int = 4) -> nn.Module:
    if name == "mlp":
        return MLP(inputs, classes, hidden, depth=2, bias=bias)
    if name == "deep-mlp":
        return MLP(inputs, classes, hidden, depth=depth, bias=bias)
    if name == "cnn":
        return CNN(inputs, classes, bias=bias)
    if name == "charrnn":
        return CharRNN(classes, hidden)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
