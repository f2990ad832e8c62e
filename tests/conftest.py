"Helpers shared by the test modules."
from pathlib import Path

import numpy as np
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
