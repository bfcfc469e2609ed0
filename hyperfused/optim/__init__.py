"""torch.optim.Optimizer subclasses: one file per optimizer family, the tower logic once (base.py)."""
from .adagrad import Adagrad
from .agd import AGD
from .adam import Adam, AdamW
from .base import HyperOptimizer
from .lion import Lion
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["HyperOptimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Lion", "AGD"]
