"""Models of the training command: an MLP, the paper's MNIST MLP (output tanh), a deeper MLP, a small CNN, a
character LSTM and a small GPT-style character transformer.

Every model maps a batch to logits whose last dimension is the number of classes, so one loss serves all:
cross-entropy over ``logits.reshape(-1, classes)`` against ``targets.reshape(-1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

MODELS = ("mlp", "paper-mlp", "deep-mlp", "cnn", "charrnn", "gpt")


class MLP(nn.Sequential):
    """inputs-hidden-...-classes with tanh (the paper's MNIST MLP is 784-128-10); ``depth`` linear layers."""

    def __init__(self, inputs: int, classes: int, hidden: int = 128, depth: int = 2, bias: bool = True):
        layers, width = [], inputs
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden, bias=bias), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, classes, bias=bias))
        super().__init__(*layers)


class PaperMLP(nn.Sequential):
    """The MNIST model of the paper's own code: inputs-hidden-classes with tanh after the hidden layer *and* after
    the output layer, so the logits fed to log_softmax lie in [-1, 1] (its loss, log_softmax then NLL, is the
    cross-entropy the training command takes of any model's output). Linear layers keep torch's default
    initialisation, kaiming_uniform(a=sqrt(5)) for the weights, which is what the paper's code calls."""

    def __init__(self, inputs: int, classes: int, hidden: int = 128, bias: bool = True):
        super().__init__(nn.Linear(inputs, hidden, bias=bias), nn.Tanh(), nn.Linear(hidden, classes, bias=bias),
                         nn.Tanh())


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


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)); causal multi-head self-attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.reshape(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A GPT-style character model: token and learned position embeddings, ``layers`` pre-norm blocks, a final
    LayerNorm and a linear read-out; next-character logits at every position. Weights N(0, 0.02), the residual
    projections N(0, 0.02 / sqrt(2 layers)), biases 0 (GPT-2's initialisation)."""

    def __init__(self, vocab: int, width: int = 128, layers: int = 4, heads: int = 4, context: int = 256):
        super().__init__()
        if width % heads:
            raise ValueError(f"gpt: width {width} is not a multiple of heads {heads}")
        self.context = context
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, x):
        t = x.shape[-1]
        if t > self.context:
            raise ValueError(f"gpt: sequences of {t} characters exceed the model's context of {self.context}")
        h = self.embed(x) + self.pos(torch.arange(t, device=x.device))
        return self.out(self.ln(self.blocks(h)))


def default_model(data_name: str) -> str:
    return {"shakespeare": "charrnn"}.get(data_name, "mlp")


def make_model(name: str, inputs: int, classes: int, hidden: int = 128, bias: bool = True,
               depth: int = 4) -> nn.Module:
    if name == "mlp":
        return MLP(inputs, classes, hidden, depth=2, bias=bias)
    if name == "paper-mlp":
        return PaperMLP(inputs, classes, hidden, bias=bias)
    if name == "deep-mlp":
        return MLP(inputs, classes, hidden, depth=depth, bias=bias)
    if name == "cnn":
        return CNN(inputs, classes, bias=bias)
    if name == "charrnn":
        return CharRNN(classes, hidden)
    if name == "gpt":
        return CharGPT(classes, width=hidden, layers=depth)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
