#!/usr/bin/env python3
"""GPU benchmark, all measurements in one run (see run_gpu.sh for the setup). Prints a markdown table.

1. model-only ceiling: xresnet50 train steps at 128 px on synthetic data already on the GPU (bf16 autocast, channels_last),
   at bs 64 and bs 256 (ReLU + SGD, with and without cudnn.benchmark) and at bs 64 with Mish + RAdam (fastai's optimiser without Lookahead);
2. host syncs per epoch in exp's training loop (CUDA sync debug mode);
3. exp: `python -m exp.nb_10a` (xresnet50, 5 epochs, 128 px, fast pipeline) in several configurations (EXP_RUNS), each
   timed from process start to its final metric (the last write of metrics.json) and to exit, with the accuracy and
   per-epoch seconds from its run folder; the first run of each cache geometry builds the image cache;
4. fastai 2.8.12's train_imagenette recipe (xresnet50 + Mish, ranger, flat-cos lr 8e-3, bs 64, fp16, label smoothing,
   RandomResizedCrop 128) in a subprocess, timed the same way, right after exp's like-for-like run;
5. the data pipeline alone: tests/bench_pipeline.py on the GPU (per-item path vs fast path).
Steps run most important first, each under the time left before --deadline (a step that would not fit is skipped and
said so); a step that fails or times out is reported in the table and the others still run.

Only a few small files go to --out (the device tool returns at most 8): table.md, results.json and logs.tgz (every log,
and each run folder's config/metrics, no weights), rewritten after every step. Run folders and caches live in --work.

    python3 tests/gpu/bench_gpu.py --out DIR [--deadline UNIX_TIME]   # the measurement (needs CUDA)
    python3 tests/gpu/bench_gpu.py --smoke --out DIR                  # CPU smoke run: tiny sizes, checks the script end to end
    python3 tests/gpu/bench_gpu.py --parse-only RUN_DIR               # print the summary of one exp-train run folder
"""
import argparse, io, json, os, platform, re, shutil, subprocess, sys, tarfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NO_MIXUP = 'bcd,zero_gamma,no_bias_decay,warmup_cosine,label_smoothing,mixed_precision,channels_last'
FASTAI_RECIPE = ['--tricks', NO_MIXUP, '--opt', 'ranger', '--act', 'mish', '--schedule', 'flat-cos']
EXP_RUNS = [   # (key, label, batch size, extra exp-train arguments), most important first; fastai runs after the first
    ('fastai-recipe', "fastai's recipe on exp (no mixup, ranger, Mish, flat-cos), bs 64", 64, FASTAI_RECIPE),
    ('all', 'bag of tricks (all, the exp-train default), bs 64', 64, []),
    ('no-mixup-256', 'all but mixup, bs 256, lr 0.4', 256, ['--tricks', NO_MIXUP, '--lr', '0.4']),
    ('fastai-recipe-whole', "fastai's recipe on exp + crops from the whole picture, bs 64", 64, FASTAI_RECIPE + ['--crop', 'whole']),
    ('no-mixup', 'all but mixup, bs 64', 64, ['--tricks', NO_MIXUP]),
    ('no-mixup-256-compile', 'all but mixup, bs 256, lr 0.4, --compile', 256, ['--tricks', NO_MIXUP, '--lr', '0.4', '--compile']),
]
NEEDS = {'no-mixup-256-compile': 240}   # seconds a run needs at least (compiling); others: MIN_STEP
MIN_STEP = 60

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
print('FINAL_ACC', float(learn.recorder.values[-1][2]), 'AT', repr(time.time()), flush=True)
'''


def timed(cmd, log, timeout=None, env=None):
    "Run `cmd` (killed after `timeout` s), output to `log`; return (start time, seconds to exit, output, return code or 'timeout')."
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        as_text = lambda b: b.decode(errors='replace') if isinstance(b, bytes) else (b or '')
        out, rc = as_text(e.stdout) + as_text(e.stderr), 'timeout'
    Path(log).write_text(out)
    if rc: print(f'FAILED ({rc}): {" ".join(map(str, cmd))}\n{out[-3000:]}', flush=True)
    return t0, time.time() - t0, out, rc


def ceiling(bs, device, size=128, steps=30, benchmark=False, act='relu'):
    "Model-only train img/s of xresnet50 at `size` px (bf16 autocast on CUDA, channels_last), data already on the device."
    import torch
    from exp.nb_10 import xresnet50, ACTS
    torch.backends.cudnn.benchmark = benchmark          # cuDNN autotuning of conv algorithms (exp-train leaves it off)
    dev = torch.device(device)
    m = xresnet50(c_out=10, act_cls=ACTS[act]).to(dev).to(memory_format=torch.channels_last)
    if act == 'relu': opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    else: opt = torch.optim.RAdam(m.parameters(), lr=8e-3, betas=(0.95, 0.99), eps=1e-6, decoupled_weight_decay=True,
                                  weight_decay=0.01)   # exp's ranger without Lookahead's cheap averaging (multi-tensor on CUDA)
    x = torch.randn(bs, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=dev)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == 'cuda'):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    try:
        for _ in range(5): step()
        sync(); t0 = time.time()
        for _ in range(steps): step()
        sync()
    finally: torch.backends.cudnn.benchmark = False
    return bs * steps / (time.time() - t0)


def count_syncs(device='cuda', epochs=2, n=1280, bs=64):
    "Host syncs inside the training loop: xresnet18 + every trick on the fast path, CUDA sync debug mode, per epoch."
    import warnings, torch
    from dataclasses import replace
    from exp.nb_10 import BAG, TensorBatchLoader, DataBunch, Callback, build_learner, imagenette_stats
    dev, cuda = torch.device(device), torch.device(device).type == 'cuda'
    def loader(train):
        x = torch.randint(0, 256, (n, 3, 160, 160), dtype=torch.uint8, device=dev)
        return TensorBatchLoader(x, torch.randint(0, 10, (n,)), bs, 128, train=train, device=dev, stats=imagenette_stats,
                                 seed=0)
    class Count(Callback):
        order = -100   # before the nan guard's check at begin_validate, which may wait on purpose
        def __init__(self, log): self.log, self.counts = log, []
        def syncs(self): return sum('synchroniz' in str(w.message) for w in self.log)
        def begin_epoch(self): self.start = self.syncs()
        def begin_validate(self): self.counts.append(self.syncs() - self.start)
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
    return cnt.counts, len(data.train_dl), sorted({str(w.message)[:100] for w in log})[:5]


METRIC_KEYS = {'epoch', 'train_loss', 'train_acc', 'valid_loss', 'valid_acc', 'lr', 'seconds'}   # exp.nb_10's RunLogger rows


def exp_run_summary(run_dir, epochs, bs=None):
    "Final accuracy and throughput of an exp-train run folder: metrics.json (a list of RunLogger rows) and config.json."
    run_dir = Path(run_dir)
    rows = json.loads((run_dir / 'metrics.json').read_text())
    cfg = json.loads((run_dir / 'config.json').read_text())
    if not isinstance(rows, list) or not rows or any(METRIC_KEYS - set(r) for r in rows):
        raise ValueError(f'{run_dir}/metrics.json: expected a list of rows with keys {sorted(METRIC_KEYS)}')
    if [r['epoch'] for r in rows] != list(range(1, epochs + 1)):
        raise ValueError(f'{run_dir}/metrics.json: epochs {[r["epoch"] for r in rows]}, expected 1..{epochs}')
    secs, n_train = sum(float(r['seconds']) for r in rows), int(cfg['n_train'])
    bs = int(cfg.get('bs', bs or 1))
    trained = n_train // bs * bs                      # the training loader drops the last partial batch
    return dict(valid_acc=float(rows[-1]['valid_acc']), epoch_seconds=secs, n_train=n_train, trained_per_epoch=trained,
                n_valid=int(cfg['n_valid']), pipeline=cfg.get('pipeline', '?'), epoch_acc=[float(r['valid_acc']) for r in rows],
                epoch_seconds_each=[float(r['seconds']) for r in rows], train_img_per_s=trained * len(rows) / secs)


class Report:
    "The results dict; table.md, results.json and logs.tgz rendered from it into `out` after every step."
    def __init__(self, out, work, **info):
        self.out, self.work, self.t0 = out, work, time.time()
        self.res = dict(info, ceiling={}, exp={}, notes=[], failed=[])
    def fail(self, step, why):
        self.res['failed'].append(dict(step=step, why=why)); print(f'STEP FAILED: {step}: {why}', flush=True)
    def rows(self):
        r, rows = self.res, []
        for k, c in r['ceiling'].items(): rows.append((f'model-only ceiling, xresnet50, {k}', f'{c:,.0f} img/s', ''))
        if 'syncs' in r:
            s = r['syncs']
            rows.append(('host syncs in the training loop (xresnet18, all tricks, fast path)', f'{s["per_epoch"]} per epoch',
                         f'{s["batches_per_epoch"]} batches an epoch; CUDA sync debug mode'))
        f = r.get('fastai')
        if f: rows.append((f'fastai 2.8.12 xresnet50, {r["epochs"]} epochs, bs 64', f'{f["to_metric"]:.1f} s to final metric '
                           f'({f["wall"]:.1f} s to exit)', f'{f["valid_acc"]:.2%}'))
        for key, s in r['exp'].items():
            rows.append((f'exp xresnet50, {s["label"]}{" (builds its image cache)" if s["builds_cache"] else " (cache reused)"}',
                         f'{s["to_metric"]:.1f} s to final metric ({s["wall"]:.1f} s to exit); {s["epoch_seconds"]:.1f} s in epochs',
                         f'{s["valid_acc"]:.2%}'))
            if f: rows.append(('  speed-up vs fastai (to final metric)', f'{f["to_metric"] / s["to_metric"]:.1f}x',
                               f'accuracy {100 * (s["valid_acc"] - f["valid_acc"]):+.2f} points'))
            ceil = r['ceiling'].get(s['ceiling_key'])
            if ceil: rows.append((f'  train throughput vs ceiling ({s["ceiling_key"]})', f'{s["train_img_per_s"]:,.0f} img/s',
                                  f'{s["train_img_per_s"] / ceil:.2f}x of ceiling (epoch seconds include validation)'))
        for p in r.get('pipeline', []): rows.append((f'pipeline on this machine: {p[0]}, epoch {p[1]}', f'{p[2]} img/s', p[3]))
        for x in r['failed']: rows.append((f'FAILED or skipped: {x["step"]}', x['why'][:200].replace('|', '/').replace('\n', ' '), ''))
        return rows
    def save(self):
        self.res['seconds_so_far'] = round(time.time() - self.t0, 1)
        table = '| measurement | value | note |\n| --- | --- | --- |\n' + ''.join('| ' + ' | '.join(r) + ' |\n' for r in self.rows())
        table += ''.join(f'\n- {n}' for n in self.res['notes']) + '\n'
        for name, text in (('results.json', json.dumps(self.res, indent=1)), ('table.md', table)):
            (self.out / f'.{name}.tmp').write_text(text); os.replace(self.out / f'.{name}.tmp', self.out / name)
        with tarfile.open(self.out / '.logs.tgz.tmp', 'w:gz') as tf:   # logs and run metadata, never weights or caches
            for p in sorted(self.work.rglob('*')):
                if p.is_file() and (p.suffix in ('.log', '.py', '.json', '.csv', '.txt')) and '.exp-cache' not in p.parts:
                    tf.add(p, arcname=str(p.relative_to(self.work)))
        os.replace(self.out / '.logs.tgz.tmp', self.out / 'logs.tgz')
        return table


def left(a):
    "Seconds left before the deadline (None: no deadline)."
    return None if a.deadline is None else a.deadline - time.time()


def step(rep, a, name, fn, needs=MIN_STEP):
    "Run one measurement `fn(timeout)` if `needs` seconds are left; record a failure or a skip instead of stopping."
    t = left(a)
    if t is not None and t < needs: return rep.fail(name, f'skipped: {t:.0f} s left before the deadline, needs ~{needs} s')
    try: fn(None if t is None else t - 10)
    except Exception as e:
        traceback.print_exc(); rep.fail(name, f'{type(e).__name__}: {e}')
    finally: rep.save()


def run_exp(rep, a, key, label, bs, extra, device, size, limit, timeout, geometries):
    "One exp-train run; its summary goes to rep.res['exp'][key]."
    run_dir = a.work / f'exp-{key}'
    shutil.rmtree(run_dir, ignore_errors=True)
    small = ['--limit', str(limit), '--workers', '0'] if limit else []
    bs = 8 if a.smoke else bs
    cmd = [sys.executable, '-m', 'exp.nb_10a', '--arch', 'xresnet50', '--epochs', str(a.epochs), '--bs', str(bs),
           '--size', str(size), '--pipeline', 'fast', '--device', device, '--out', str(run_dir), '--no-progress',
           '--cache-dir', str(a.work / '.exp-cache'), *small, *extra]
    t0, secs, out, rc = timed(cmd, a.work / f'exp-{key}.log', timeout)
    if rc: raise RuntimeError(f'exp-train exited with {rc}; see exp-{key}.log in logs.tgz: ' + out.strip()[-300:])
    s = exp_run_summary(run_dir, a.epochs, bs)
    geometry = 'whole' if 'whole' in extra else 'square'
    act = 'mish' if 'mish' in extra else 'relu'
    s.update(label=label, wall=secs, to_metric=(run_dir / 'metrics.json').stat().st_mtime - t0, bs=bs,
             builds_cache=geometry not in geometries, ceiling_key=f'bs {bs}, {act}' + (', SGD' if act == 'relu' else ', RAdam'))
    geometries.add(geometry)
    rep.res['exp'][key] = s


def run_fastai(rep, a, size, limit, timeout):
    "fastai's recipe in a subprocess; its wall time and accuracy go to rep.res['fastai']."
    script = a.work / 'fastai_imagenette.py'; script.write_text(FASTAI)
    t0, secs, out, rc = timed([sys.executable, str(script), str(a.epochs), str(limit), str(size)], a.work / 'fastai.log', timeout)
    if rc: raise RuntimeError(f'fastai exited with {rc}; see fastai.log in logs.tgz: ' + out.strip()[-300:])
    m = re.findall(r'FINAL_ACC ([-+0-9.eainf]+) AT ([0-9.]+)', out)
    if not m: raise RuntimeError('fastai printed no FINAL_ACC line; see fastai.log')
    rep.res['fastai'] = dict(wall=secs, to_metric=float(m[-1][1]) - t0, valid_acc=float(m[-1][0]))


def run_pipeline(rep, a, device, timeout):
    "tests/bench_pipeline.py on this machine; its table rows go to rep.res['pipeline']."
    pargs = ['--device', device] + (['--quick'] if a.smoke else ['--n', '0'])
    _, _, out, rc = timed([sys.executable, 'tests/bench_pipeline.py', *pargs], a.work / 'pipeline.log', timeout)
    if rc: raise RuntimeError(f'bench_pipeline exited with {rc}; see pipeline.log: ' + out.strip()[-300:])
    rep.res['pipeline'] = [tuple(c.strip() for c in l.strip('|').split('|')) for l in out.splitlines()
                           if re.match(r'\| (per-item|fast)', l)]


def versions():
    "Library and machine versions for the record."
    import torch, torchvision
    v = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
             gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, cpus=os.cpu_count(),
             date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    try:
        import importlib.metadata as md; v['fastai'] = md.version('fastai')
    except Exception: v['fastai'] = None
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', type=Path, default=Path('/tmp/exp-gpu-bench'), help='results: table.md, results.json, logs.tgz')
    ap.add_argument('--work', type=Path, default=None, help='run folders, caches and logs (default /tmp/exp-gpu-work)')
    ap.add_argument('--deadline', type=float, default=None, help='unix time by which every step must have ended')
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
    a.work = a.work or Path('/tmp/exp-gpu-work')
    for d in (a.out, a.work): d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(a.work / '.exp-cache', ignore_errors=True)   # the first run of each geometry really builds its cache
    rep = Report(a.out, a.work, device=device, epochs=a.epochs, smoke=a.smoke, versions=versions())
    rep.res['notes'] = [
        "exp's times include what exp-train writes: a checkpoint (weights, optimizer state, RNG) at every epoch end, "
        'model.pt and plot.png; fastai writes nothing.',
        'throughput = images trained per epoch (last partial batch dropped) x epochs / summed epoch seconds, which include '
        'validation: a lower bound of the training speed.']
    rep.save()
    steps = 2 if a.smoke else 30
    def ceil_step(bs, act, benchmark=False):
        key = f'bs {bs}, {act}' + (', SGD' if act == 'relu' else ', RAdam') + (', cudnn.benchmark' if benchmark else '')
        def fn(timeout): rep.res['ceiling'][key] = ceiling(bs, device, size, steps, benchmark, act)
        step(rep, a, f'model-only ceiling, {key}', fn, 20)
    for bs, act in ((64, 'relu'), (256, 'relu'), (64, 'mish')): ceil_step(bs, act)
    if device == 'cuda':
        for bs in (64, 256): ceil_step(bs, 'relu', True)
    if device == 'cuda':
        def syncs(timeout):
            counts, n_batches, kinds = count_syncs()
            rep.res['syncs'] = dict(per_epoch=counts, batches_per_epoch=n_batches, kinds=kinds)
        step(rep, a, 'host syncs per epoch', syncs, 30)
    geometries = set()
    def exp_step(i):
        key, label, bs, extra = EXP_RUNS[i]
        step(rep, a, f'exp {label}', lambda t: run_exp(rep, a, key, label, bs, extra, device, size, limit, t, geometries),
             NEEDS.get(key, MIN_STEP))
    exp_step(0)                                              # like for like with fastai, then fastai itself
    if not a.skip_fastai: step(rep, a, 'fastai 2.8.12', lambda t: run_fastai(rep, a, size, limit, t), 90)
    for i in range(1, len(EXP_RUNS) - 1): exp_step(i)
    step(rep, a, 'pipeline benchmark', lambda t: run_pipeline(rep, a, device, None if t is None else min(t, 150)), 60)
    exp_step(len(EXP_RUNS) - 1)                              # --compile last: the slowest to start, the least needed
    print('\n' + rep.save() + f'\n(all of the above: {rep.res["seconds_so_far"]:.0f} s; logs in {a.out / "logs.tgz"})')


if __name__ == '__main__': main()
