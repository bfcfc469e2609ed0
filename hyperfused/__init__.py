"""hyperfused: hypergradient optimizers ("Gradient Descent: The Ultimate Optimizer") as drop-in torch optimizers.

    import hyperfused as hf
    opt = hf.Adam(model.parameters(), lr=1e-3, hyper=hf.SGD(lr=1e-5))
    for x, y in data:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
"""
from . import ops
from .optim import AGD, SGD, Adagrad, Adam, AdamW, HyperOptimizer, RMSprop

__version__ = "0.1.0"
__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "AGD", "HyperOptimizer", "ops", "__version__"]
