#!/usr/bin/env python3
"""GPU benchmark, all measurements in one run (see run_gpu.sh for the setup). Prints a markdown table.

1. model-only ceiling: xresnet50 train steps at 128 px on synthetic data already on the GPU (bf16 autocast, channels_last),
   at bs 64 and bs 256;
2. exp: `python -m exp.nb_10` (xresnet50, 5 epochs, 128 px, fast pipeline) in several configurations (EXP_RUNS), each
   timed from process start to exit, with the accuracy and per-epoch seconds from its run folder (metrics.json,
   config.json); the first run builds the image cache, the others reuse it;
3. fastai 2.8.12's train_imagenette recipe (xresnet50 + Mish, ranger, flat-cos lr 8e-3, bs 64, fp16, label smoothing,
   RandomResizedCrop 128) in a subprocess, timed the same way;
4. the data pipeline alone: tests/bench_pipeline.py on the GPU (per-item path vs fast path).
A configuration that fails is reported in the table (with its log file) and the others still run.

    python3 tests/gpu/bench_gpu.py --out DIR                    # the measurement (needs CUDA)
    python3 tests/gpu/bench_gpu.py --smoke --out DIR            # CPU smoke run: tiny sizes, checks the script end to end
    python3 tests/gpu/bench_gpu.py --parse-only RUN_DIR         # print the summary of one exp-train run folder
"""
import argparse, json, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NO_MIXUP = 'bcd,zero_gamma,no_bias_decay,warmup_cosine,label_smoothing,mixed_precision,channels_last'
EXP_RUNS = [   # (name, batch size, extra exp-train arguments)
    ('bag of tricks (all), bs 64', 64, []),
    ('all but mixup, bs 64', 64, ['--tricks', NO_MIXUP]),
    ('fastai\'s recipe (no mixup, ranger, Mish, flat-cos), bs 64', 64,
     ['--tricks', NO_MIXUP, '--opt', 'ranger', '--act', 'mish', '--schedule', 'flat-cos']),
    ('fastai\'s recipe + crops from the whole picture (builds its own cache), bs 64', 64,
     ['--tricks', NO_MIXUP, '--opt', 'ranger', '--act', 'mish', '--schedule', 'flat-cos', '--crop', 'whole']),
    ('all but mixup, bs 256, lr 0.4', 256, ['--tricks', NO_MIXUP, '--lr', '0.4']),
    ('all but mixup, bs 256, lr 0.4, --compile', 256, ['--tricks', NO_MIXUP, '--lr', '0.4', '--compile']),
]

FASTAI = r'''
import os, sys, time
from pathlib import Path
from fastai.vision.all import *
epochs, limit, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])   # limit: images per class folder, 0 = all
path = Path(os.environ['EXP_DATA']) / 'imagenette2-160'
exts = ['.webp', '.jpg', '.jpeg', '.png']
def items(p):
    fs = get_files(p, extensions=exts, recurse=True)
    if not limit: return fs
    per = {}
    for f in fs: per.setdefault(f.parent, []).append(f)
    return L(f for d in sorted(per) for f in sorted(per[d])[:limit])
dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=items,
                   splitter=GrandparentSplitter(valid_name='val'), get_y=parent_label,
                   item_tfms=[RandomResizedCrop(size, min_scale=0.35), FlipItem(0.5)],
                   batch_tfms=[Normalize.from_stats(*imagenet_stats)])
dls = dblock.dataloaders(path, bs=64, num_workers=min(15, os.cpu_count()))
learn = Learner(dls, xresnet50(n_out=10, act_cls=Mish), opt_func=ranger, metrics=accuracy,
                loss_func=LabelSmoothingCrossEntropy())
if torch.cuda.is_available(): learn = learn.to_fp16()
learn.fit_flat_cos(epochs, 8e-3, wd=1e-2)
print('FINAL_ACC', float(learn.recorder.values[-1][2]))
'''


def timed(cmd, log, env=None):
    "Run `cmd`, writing its output to `log`; return (wall seconds from start to exit, output, return code)."
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    Path(log).write_text(out)
    if r.returncode: print(f'FAILED ({r.returncode}): {" ".join(map(str, cmd))}\n{out[-3000:]}', flush=True)
    return time.time() - t0, out, r.returncode


def ceiling(bs, device, size=128, steps=30, benchmark=False):
    "Model-only train img/s of xresnet50 at `size` px (bf16 autocast on CUDA, channels_last, SGD), data already on the device."
    import torch
    from exp.nb_10 import xresnet50
    torch.backends.cudnn.benchmark = benchmark          # cuDNN autotuning of conv algorithms (exp-train leaves it off)
    dev = torch.device(device)
    m = xresnet50(c_out=10).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(bs, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=dev)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == 'cuda'):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(5): step()
    sync(); t0 = time.time()
    for _ in range(steps): step()
    sync()
    return bs * steps / (time.time() - t0)


def count_syncs(device='cuda', epochs=2, n=1280, bs=64):
    "Host syncs inside the training loop: xresnet18 + every trick on the fast path, CUDA sync debug mode, per epoch."
    import warnings, torch
    from dataclasses import replace
    from exp.nb_10 import BAG, TensorBatchLoader, DataBunch, Callback, build_learner, imagenette_stats
    dev, cuda = torch.device(device), torch.device(device).type == 'cuda'
    def loader(train):
        x = torch.randint(0, 256, (n, 3, 160, 160), dtype=torch.uint8, device=dev)
        return TensorBatchLoader(x, torch.randint(0, 10, (n,)), bs, 128, train=train, device=dev, mean=imagenette_stats[0],
                                 std=imagenette_stats[1], seed=0)
    class Count(Callback):
        order = -100   # before the nan guard's check at begin_validate, which may wait on purpose
        def __init__(self, log): self.log, self.counts = log, []
        def begin_epoch(self): self.start = len(self.log)
        def begin_validate(self): self.counts.append(len(self.log) - self.start)
    data = DataBunch(loader(True), loader(False), c_in=3, c_out=10)
    learn, run = build_learner(data, replace(BAG, arch='xresnet18'), device=dev)
    run.logger = lambda *a, **k: None
    run.fit(1, learn)                                     # warm-up: cuDNN autotuning, allocator
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter('always')
        if cuda: torch.cuda.set_sync_debug_mode('warn')
        try:
            cnt = Count(log); run.add_cbs([cnt]); run.fit(epochs, learn)
        finally:
            if cuda: torch.cuda.set_sync_debug_mode(0)
    return cnt.counts, len(data.train_dl), sorted({str(w.message)[:80] for w in log})[:5]


METRIC_KEYS = {'epoch', 'train_loss', 'train_acc', 'valid_loss', 'valid_acc', 'lr', 'seconds'}   # exp.nb_10's RunLogger rows


def exp_run_summary(run_dir, epochs):
    "Final accuracy and throughput of an exp-train run folder: metrics.json (a list of RunLogger rows) and config.json."
    run_dir = Path(run_dir)
    rows = json.loads((run_dir / 'metrics.json').read_text())
    cfg = json.loads((run_dir / 'config.json').read_text())
    if not isinstance(rows, list) or not rows or any(METRIC_KEYS - set(r) for r in rows):
        raise SystemExit(f'{run_dir}/metrics.json: expected a list of rows with keys {sorted(METRIC_KEYS)}')
    if [r['epoch'] for r in rows] != list(range(1, epochs + 1)):
        raise SystemExit(f'{run_dir}/metrics.json: epochs {[r["epoch"] for r in rows]}, expected 1..{epochs}')
    secs = sum(float(r['seconds']) for r in rows)
    return dict(valid_acc=float(rows[-1]['valid_acc']), epoch_seconds=secs, n_train=int(cfg['n_train']),
                n_valid=int(cfg['n_valid']), pipeline=cfg.get('pipeline', '?'), epoch_acc=[float(r['valid_acc']) for r in rows],
                train_img_per_s=int(cfg['n_train']) * len(rows) / secs)


class Report:
    "Rows of the result table and a results dict, both rewritten to OUT after every measurement (a timeout keeps what was done)."
    def __init__(self, out, **info): self.out, self.rows, self.res, self.t0 = out, [], dict(info, exp={}), time.time()
    def add(self, *row):
        self.rows.append(row); print('| ' + ' | '.join(row) + ' |', flush=True)
    def save(self):
        self.res['seconds_so_far'] = round(time.time() - self.t0, 1)
        (self.out / 'results.json').write_text(json.dumps(self.res, indent=1))
        (self.out / 'table.md').write_text('| measurement | value | note |\n| --- | --- | --- |\n' +
                                           ''.join('| ' + ' | '.join(r) + ' |\n' for r in self.rows))


def run_exp(rep, i, name, bs, extra, a, device, size, limit):
    "One exp-train run of configuration EXP_RUNS[i]; adds its rows to `rep`."
    run_dir = a.out / f'exp-run-{i}'
    small = ['--limit', str(limit), '--workers', '0'] if limit else []
    cmd = [sys.executable, '-m', 'exp.nb_10', '--arch', 'xresnet50', '--epochs', str(a.epochs), '--bs', str(8 if a.smoke else bs),
           '--size', str(size), '--pipeline', 'fast', '--device', device, '--out', str(run_dir), '--no-progress', *small, *extra]
    secs, _, rc = timed(cmd, a.out / f'exp-{i}.log')
    label = f'exp xresnet50, {name}{" (builds the image cache)" if i == 0 else ""}'
    if rc: return rep.add(label, 'failed', f'see exp-{i}.log')
    s = exp_run_summary(run_dir, a.epochs); s.update(wall=secs, bs=bs)
    rep.res['exp'][name] = s
    ceil = rep.res['ceiling'][bs]
    rep.add(label, f'{secs:.1f} s wall; {s["epoch_seconds"]:.1f} s in epochs', f'{s["valid_acc"]:.2%}')
    rep.add(f'  train throughput vs ceiling (bs {bs})', f'{s["train_img_per_s"]:,.0f} img/s',
            f'{s["train_img_per_s"] / ceil:.2f}x of ceiling (epoch seconds include validation: a lower bound)')


def run_fastai(rep, a, size, limit):
    "fastai's recipe in a subprocess; adds its row and the speed-ups of the exp runs so far."
    script = a.out / 'fastai_imagenette.py'; script.write_text(FASTAI)
    fsecs, fout, rc = timed([sys.executable, str(script), str(a.epochs), str(limit), str(size)], a.out / 'fastai.log')
    if rc: return rep.add('fastai 2.8.12 xresnet50', 'failed', 'see fastai.log')
    facc = float(re.findall(r'FINAL_ACC ([0-9.]+)', fout)[-1])
    rep.res['fastai'] = dict(wall=fsecs, valid_acc=facc)
    rep.add(f'fastai 2.8.12 xresnet50, {a.epochs} epochs, bs 64', f'{fsecs:.1f} s wall', f'{facc:.2%}')


def speedups(rep):
    "Rows comparing every finished exp run with the fastai run."
    f = rep.res.get('fastai')
    if f is None: return
    for name, s in rep.res['exp'].items():
        rep.add(f'speed-up exp ({name}) vs fastai', f'{f["wall"] / s["wall"]:.1f}x', f'accuracy {100 * (s["valid_acc"] - f["valid_acc"]):+.2f} points')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', type=Path, default=Path('/tmp/exp-gpu-bench'))
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--skip-fastai', action='store_true')
    ap.add_argument('--smoke', action='store_true', help='CPU, 4 images per class, 32 px, bs 8, 1 epoch: checks the script, measures nothing')
    ap.add_argument('--parse-only', type=Path, default=None, metavar='RUN_DIR',
                    help='only print exp_run_summary of an existing exp-train run folder (checks the parsing; no GPU needed)')
    a = ap.parse_args()
    if a.parse_only is not None:
        print(json.dumps(exp_run_summary(a.parse_only, a.epochs), indent=1)); return
    device, limit, size = ('cpu', 4, 32) if a.smoke else ('cuda', 0, 128)   # smoke: 40 images, batches of 8
    if a.smoke: a.epochs = 1
    a.out.mkdir(parents=True, exist_ok=True)
    rep = Report(a.out, device=device, epochs=a.epochs, smoke=a.smoke)
    rep.res['ceiling'] = {bs: ceiling(bs, device, size, steps=2 if a.smoke else 30) for bs in (64, 256)}
    for bs, c in rep.res['ceiling'].items(): rep.add(f'model-only ceiling, xresnet50, bs {bs}', f'{c:,.0f} img/s', '')
    if device == 'cuda':
        tuned = {bs: ceiling(bs, device, size, benchmark=True) for bs in (64, 256)}
        rep.res['ceiling_cudnn_benchmark'] = tuned
        for bs, c in tuned.items():
            rep.add(f'  the same with cudnn.benchmark, bs {bs}', f'{c:,.0f} img/s', f'{c / rep.res["ceiling"][bs]:.2f}x')
        import torch; torch.backends.cudnn.benchmark = False
    if device == 'cuda':
        counts, n_batches, kinds = count_syncs()
        rep.res['syncs'] = dict(per_epoch=counts, batches_per_epoch=n_batches, kinds=kinds)
        rep.add('host syncs in the training loop (xresnet18, all tricks, fast path)', f'{counts} per epoch',
                f'{n_batches} batches an epoch; CUDA sync debug mode')
    rep.save()
    last = len(EXP_RUNS) - 1                  # the torch.compile run goes last: the slowest to start, the least needed
    for i, (name, bs, extra) in enumerate(EXP_RUNS[:last]): run_exp(rep, i, name, bs, extra, a, device, size, limit); rep.save()
    if not a.skip_fastai: run_fastai(rep, a, size, limit); rep.save()
    pargs = ['--device', device] + (['--quick'] if a.smoke else ['--n', '0'])
    _, pout, rc = timed([sys.executable, 'tests/bench_pipeline.py', *pargs], a.out / 'pipeline.log')
    print(pout[-1500:], flush=True)
    run_exp(rep, last, *EXP_RUNS[last], a, device, size, limit)
    speedups(rep); rep.save()
    print('\n' + (a.out / 'table.md').read_text() + f'\n(all of the above: {rep.res["seconds_so_far"]:.0f} s; pipeline table in pipeline.log)')


if __name__ == '__main__': main()
