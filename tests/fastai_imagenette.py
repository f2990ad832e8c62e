#!/usr/bin/env python
"""fastai's Imagenette recipe (its `train_imagenette` example) on an ImageNet-style folder, for `bench_fastai.py`.

Runs in the separate fastai environment (.venv-fastai), never in the project's. The recipe: xresnet18 (ReLU) from
scratch, Ranger (mom 0.9, sqr_mom 0.99, eps 1e-6), flat-then-cosine schedule at lr 8e-3, weight decay 1e-2, label
smoothing cross-entropy, RandomResizedCrop(size, min_scale=0.35) + horizontal flip per item from the files as they are,
ImageNet normalisation. After each epoch it rewrites OUT/metrics.json with rows shaped like exp-train's
(epoch, train_loss, valid_loss, valid_acc, seconds), so that the benchmark reads both the same way.

    .venv-fastai/bin/python tests/fastai_imagenette.py --data DIR --size 64 --epochs 5 --bs 64 --seed 0 --out RUN
"""
import argparse, json, os, time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='folder with train/ and val/ of class folders')
    p.add_argument('--size', type=int, default=64, help='image side in pixels')
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--bs', type=int, default=64, help='batch size')
    p.add_argument('--lr', type=float, default=8e-3, help='peak learning rate')
    p.add_argument('--wd', type=float, default=1e-2, help='weight decay')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=None, help="DataLoader workers (default: fastai's, min(8, cpus))")
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N')
    p.add_argument('--out', required=True, help='run folder: metrics.json and config.json go here')
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    import torch
    from torch import nn
    import fastai
    from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, GrandparentSplitter, get_image_files,
                                   parent_label, RandomResizedCrop, FlipItem, Normalize, imagenet_stats, Learner,
                                   LabelSmoothingCrossEntropy, accuracy, ranger, xresnet18, set_seed, num_cpus,
                                   Callback, ProgressCallback)
    from functools import partial

    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    src = Path(a.data)
    workers = min(8, num_cpus()) if a.workers is None else a.workers
    set_seed(a.seed, reproducible=True)
    # Items: the files of train/ and val/ (hidden folders such as exp's cache are skipped by get_image_files).
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      splitter=GrandparentSplitter(train_name='train', valid_name='val'),
                      item_tfms=[RandomResizedCrop(a.size, min_scale=0.35), FlipItem(0.5)],
                      batch_tfms=[Normalize.from_stats(*imagenet_stats)])
    dls = block.dataloaders(src, path=out, bs=a.bs, num_workers=workers, device=torch.device(a.device))

    class EpochLog(Callback):
        "Time each epoch and rewrite metrics.json after it (after the Recorder has its values)."
        order = 70
        def before_fit(self): self.rows = []
        def before_epoch(self): self.t0 = time.time()
        def after_epoch(self):
            names = [str(n) for n in self.recorder.metric_names[1:-1]]   # without 'epoch' and 'time'
            vals = dict(zip(names, self.recorder.values[-1]))
            self.rows.append(dict(epoch=self.epoch + 1, train_loss=float(vals['train_loss']),
                                  valid_loss=float(vals['valid_loss']), valid_acc=float(vals['accuracy']),
                                  seconds=round(time.time() - self.t0, 2)))
            tmp = out / 'metrics.json.tmp'
            tmp.write_text(json.dumps(self.rows, indent=1)); os.replace(tmp, out / 'metrics.json')

    model = xresnet18(n_out=len(dls.vocab), act_cls=nn.ReLU)
    opt = partial(ranger, mom=0.9, sqr_mom=0.99, eps=1e-6, beta=0.)
    learn = Learner(dls, model, opt_func=opt, loss_func=LabelSmoothingCrossEntropy(), metrics=accuracy, path=out,
                    cbs=EpochLog())
    learn.remove_cb(ProgressCallback)   # no bars in the log; the Recorder still prints one line per epoch
    (out / 'config.json').write_text(json.dumps(dict(vars(a), workers=workers, fastai=fastai.__version__,
                                                     torch=torch.__version__, threads=torch.get_num_threads(),
                                                     n_train=len(dls.train_ds), n_valid=len(dls.valid_ds),
                                                     vocab=list(dls.vocab)), indent=1))
    print(f'fastai {fastai.__version__}, torch {torch.__version__}: {len(dls.train_ds)} train / {len(dls.valid_ds)} '
          f'valid images, size {a.size}, bs {a.bs}, {a.epochs} epochs, lr {a.lr}, seed {a.seed}', flush=True)
    learn.fit_flat_cos(a.epochs, a.lr, wd=a.wd)


if __name__ == '__main__': main()
