"""hyperfused: hypergradient optimizers ("Gradient Descent: The Ultimate Optimizer") as drop-in torch optimizers.

    import hyperfused as hf
    opt = hf.Adam(model.parameters(), lr=1e-3, hyper=hf.SGD(lr=1e-5))
    for x, y in data:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
"""
from . import ops
from .optim import *  # noqa: F401,F403 - every optimizer class (hyperfused.optim.__all__)
from .optim import __all__ as _optimizers

__version__ = "0.1.0"
__all__ = list(_optimizers) + ["ops", "__version__"]
