"Helpers shared by the test modules (one definition each; pytest puts tests/ on sys.path, so modules import them from here)."
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim
from PIL import Image


def make_image_folder(root, classes, n_train=8, n_valid=4, shape=(40, 48), seed=0, ext='.jpg'):
    "An ImageNet-style folder train/<class>/*, val/<class>/* of small random images, each class its own dominant colour."
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_valid)):
        for c, cls in enumerate(classes):
            d = Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 60, (*shape, 3), dtype=np.uint8)
                a[..., c % 3] += 150
                Image.fromarray(a).save(d / f'{i}{ext}', **({'quality': 90} if ext == '.jpg' else {}))
    return Path(root)


# ---------------------------------------------------------------------------------------------- Runner helpers
from exp.nb_05 import EVENTS, Callback, DataBunch, Dataset, Learner, get_dls


class EventLog(Callback):
    "Record the name of every event (first in order, so it also sees the event in which another callback raises)."
    order = -100
    def __init__(self): self.events = []
for _e in EVENTS: setattr(EventLog, _e, lambda self, e=_e: self.events.append(e))


class Raiser(Callback):
    "Raise `exc` at `event` in epoch `epoch`, batch `it` (None: any), in training (train=True) or validation."
    def __init__(self, exc, event, epoch, it=None, train=True):
        self.exc, self.ev, self.ep, self.it, self.train = exc, event, epoch, it, train
    def check(self, ev):
        r = self.run
        if ev == self.ev and r.epoch == self.ep and r.in_train == self.train and self.it in (None, r.iter): raise self.exc()
for _e in EVENTS: setattr(Raiser, _e, lambda self, e=_e: self.check(e))


def tiny_learner(lr=0.1, seed=0):
    "Linear model on random data: 3 training batches of 4 items, 2 validation batches of 8."
    torch.manual_seed(seed)
    x, y = torch.randn(28, 5), torch.randint(0, 3, (28,))
    d = DataBunch(*get_dls(Dataset(x[:12], y[:12]), Dataset(x[12:], y[12:]), 4), c_out=3)
    m = nn.Linear(5, 3)
    return Learner(m, optim.SGD(m.parameters(), lr=lr), F.cross_entropy, d)


def loss_going_bad(at_call, value=math.nan):
    "Cross-entropy that returns `value` on call number `at_call` (0-based)."
    calls = [0]
    def loss_func(pred, yb):
        loss = F.cross_entropy(pred, yb); calls[0] += 1
        return loss * value if calls[0] - 1 == at_call else loss
    return loss_func
