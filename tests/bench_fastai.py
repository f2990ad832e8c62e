#!/usr/bin/env python
"""Benchmark: exp-train against fastai 2.8.12's Imagenette recipe at equal budget (issue 12), side by side.

Same data (Imagenette-160 from exp's `untar_data`, or --data), same architecture (xresnet18, ReLU), same image size,
batch size, epochs and seeds, one run after the other on this machine:
  fastai      fastai's `train_imagenette` recipe (tests/fastai_imagenette.py) in the separate environment .venv-fastai
  exp         exp-train with its defaults
  exp-fastai  exp-train with fastai's recipe: --opt ranger --schedule flat-cos --tricks bcd,label_smoothing,no_bias_decay
For each: final valid accuracy, seconds per epoch (mean over epochs, validation included) and wall time from process
start to the final metric (imports, data loading, any cache building, all epochs). Prints markdown tables (ratios
against fastai from this same invocation) and writes them, the logs and the run folders under --out.

The fastai environment is made once (stamp file) with fastai==2.8.12 from PyPI; it reuses the project venv's torch
(a .pth file appends .venv's site-packages after its own), so both sides run the very same torch build.

    python3 dev.py bench-fastai                                          # full data: 64 px, 5 epochs, bs 64, seed 0
    python3 dev.py bench-fastai --seeds 0,1                              # 2 seeds each
    python3 dev.py bench-fastai --limit 20 --size 32 --epochs 1          # smoke run: 20 images per class
    python3 dev.py bench-fastai --setup                                  # only create the fastai environment
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASTAI = '2.8.12'
FASTAI_PINS = [f'fastai=={FASTAI}']           # fastprogress etc.: what fastai's own requirements resolve to
FA_VENV = ROOT / '.venv-fastai'
BIN = 'Scripts' if os.name == 'nt' else 'bin'
EXE = 'python.exe' if os.name == 'nt' else 'python'
FA_PY = FA_VENV / BIN / EXE
PROJECT_PY = ROOT / '.venv' / BIN / EXE
STAMP = FA_VENV / '.bench-fastai-stamp'
PTH = '_exp_shared_torch.pth'
RUNS = {'fastai': "fastai 2.8.12 `train_imagenette` recipe (ranger, flat-cos 8e-3, wd 1e-2, label smoothing, RRC 0.35 + flip)",
        'exp': 'exp-train defaults',
        'exp-fastai': 'exp-train --opt ranger --schedule flat-cos --tricks bcd,label_smoothing,no_bias_decay'}
EXP_FASTAI_FLAGS = ['--opt', 'ranger', '--schedule', 'flat-cos', '--tricks', 'bcd,label_smoothing,no_bias_decay']
IMAGE_EXTS = {'.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff'}


def say(msg): print(f'[bench-fastai] {msg}', flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', type=int, default=64, help='image side in pixels (default: 64)')
    p.add_argument('--epochs', type=int, default=5, help='epochs (default: 5)')
    p.add_argument('--bs', type=int, default=64, help='batch size (default: 64)')
    p.add_argument('--seeds', default='0', help='comma list of seeds; each run is repeated per seed (default: 0)')
    p.add_argument('--limit', type=int, default=None,
                   help='images per class in train/ and val/ (a folder of symlinks, the same for all runs); '
                        'default: the full data')
    p.add_argument('--only', default='fastai,exp,exp-fastai',
                   help='comma list of runs among fastai, exp, exp-fastai (default: all three)')
    p.add_argument('--data', default=None, help='folder with train/ and val/ of class folders (default: Imagenette-160 '
                                                "via exp's untar_data, from EXP_DATA_MIRROR when set)")
    p.add_argument('--device', default='cpu', help='device for every run (default: cpu)')
    p.add_argument('--workers', type=int, default=None, help="DataLoader workers for every run (default: each library's)")
    p.add_argument('--out', default=None, help='folder for logs, run folders and the tables (default: runs/bench-fastai/<time>)')
    p.add_argument('--setup', action='store_true', help='only create/check the fastai environment, then stop')
    a = p.parse_args(argv)
    a.only = [r.strip() for r in a.only.split(',') if r.strip()]
    bad = [r for r in a.only if r not in RUNS]
    if bad or not a.only: p.error(f'--only: {",".join(bad) or "(empty)"} unknown; choose among {", ".join(RUNS)}')
    try: a.seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
    except ValueError: p.error(f'--seeds {a.seeds!r}: a comma list of integers, e.g. 0,1')
    if not a.seeds: p.error('--seeds: give at least one seed')
    if a.limit is not None and a.limit < 1: p.error('--limit: a positive number of images per class')
    for k in ('size', 'epochs', 'bs'):
        if getattr(a, k) < 1: p.error(f'--{k}: must be positive')
    return a


# --- the separate fastai environment ---------------------------------------------------------------------------------

def py_out(py, code):
    "What `py -c code` prints (stripped)."
    return subprocess.run([str(py), '-c', code], check=True, capture_output=True, text=True).stdout.strip()


PURELIB = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'


def fastai_env():
    "Create .venv-fastai with fastai 2.8.12 (once: a stamp file records what it holds) and return its python."
    if not PROJECT_PY.exists(): sys.exit(f'[bench-fastai] {PROJECT_PY} is missing: run `python3 dev.py setup` first')
    shared = py_out(PROJECT_PY, PURELIB)
    want = json.dumps(dict(pins=FASTAI_PINS, shared=shared, python=py_out(PROJECT_PY, 'import sys; print(sys.version)')))
    if FA_PY.exists() and STAMP.exists() and STAMP.read_text() == want:
        say(f'fastai environment {FA_VENV.name}/ is ready ({", ".join(FASTAI_PINS)}; stamp matches)')
        return FA_PY
    t0 = time.time()
    works = FA_PY.exists() and subprocess.run([str(FA_PY), '-m', 'pip', '--version'], capture_output=True).returncode == 0
    if not works:
        say(f'creating virtual environment {FA_VENV} (python of {PROJECT_PY.parent.parent.name}/)')
        subprocess.run([str(PROJECT_PY), '-m', 'venv', '--clear', str(FA_VENV)], check=True)
    own = Path(py_out(FA_PY, PURELIB))
    # torch is shared, not reinstalled: the project venv's site-packages go after this venv's own (its packages win).
    (own / PTH).write_text(shared + '\n')
    say(f'{own / PTH}: appends {shared} (torch, torchvision and the other shared packages)')
    cmd = [str(FA_PY), '-m', 'pip', 'install', '-q', *FASTAI_PINS]
    say(' '.join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    noise = "WARNING: Location 'file:"                        # this machine's pip config names absent local indexes
    print(''.join(l for l in (r.stdout + r.stderr).splitlines(True) if not l.startswith(noise)), end='', flush=True)
    if r.returncode: sys.exit(f'[bench-fastai] pip failed ({r.returncode}); {FA_VENV} is left as it is (no stamp)')
    info = py_out(FA_PY, 'import fastai, fastcore, torch; print(f"fastai {fastai.__version__}, fastcore {fastcore.__version__}, '
                         'torch {torch.__version__} from {torch.__file__}")')
    say(f'installed in {time.time() - t0:.0f}s: {info}')
    STAMP.write_text(want)
    return FA_PY


# --- data: the same folder for every run -----------------------------------------------------------------------------

def data_env():
    "The environment of child processes: EXP_DATA_MIRROR set as dev.py does (the shared mirror beside the checkout)."
    env = dict(os.environ)
    shared = ROOT.parent / 'shared' / 'data'
    if 'EXP_DATA_MIRROR' not in env and shared.is_dir(): env['EXP_DATA_MIRROR'] = str(shared)
    return env


def imagenette_160():
    "Imagenette-160's extracted folder, from exp's untar_data (run by the project venv's python)."
    say('Imagenette-160 via exp.nb_10.datasets.untar_data')
    code = 'from exp.nb_10 import datasets; print(datasets.untar_data(datasets.URLs.IMAGENETTE_160))'
    r = subprocess.run([str(PROJECT_PY), '-c', code], capture_output=True, text=True, env=data_env(), cwd=ROOT)
    if r.returncode: sys.exit(f'[bench-fastai] untar_data failed:\n{r.stderr[-3000:]}')
    return Path(r.stdout.strip().splitlines()[-1])


def visible(p): return not p.name.startswith('.')


def subset_folder(src, n, dst):
    "`dst`: train/ and val/ with the first `n` images (by name) of each class of `src`, as symlinks; reused when complete."
    want = json.dumps(dict(src=str(src), n=n))
    stamp = dst / '.bench-subset.json'
    if stamp.exists() and stamp.read_text() == want: return dst
    for split in ('train', 'val'):
        classes = sorted(c for c in (src / split).iterdir() if c.is_dir() and visible(c))
        if not classes: sys.exit(f'[bench-fastai] {src / split} has no class folders')
        for c in classes:
            files = sorted(f for f in c.iterdir() if visible(f) and f.suffix.lower() in IMAGE_EXTS)[:n]
            d = dst / split / c.name
            d.mkdir(parents=True, exist_ok=True)
            for old in d.iterdir():
                if old.is_symlink(): old.unlink()
            for f in files: (d / f.name).symlink_to(f.resolve())
    stamp.write_text(want)
    return dst


def count_images(path):
    "Images in train/ and val/."
    return tuple(sum(1 for c in (path / s).iterdir() if visible(c) for f in c.iterdir() if visible(f)) for s in ('train', 'val'))


# --- the runs --------------------------------------------------------------------------------------------------------

def command(kind, a, data, seed, run_dir, fa_py):
    "The command line of one run."
    common = ['--data', data, '--size', a.size, '--epochs', a.epochs, '--bs', a.bs, '--seed', seed,
              '--device', a.device, '--out', run_dir] + (['--workers', a.workers] if a.workers is not None else [])
    if kind == 'fastai': return [fa_py, ROOT / 'tests' / 'fastai_imagenette.py', *common]
    extra = EXP_FASTAI_FLAGS if kind == 'exp-fastai' else []
    return [PROJECT_PY, '-m', 'exp.nb_10a', *common, '--arch', 'xresnet18', '--act', 'relu', *extra, '--no-progress']


def run_one(kind, a, data, seed, out, fa_py):
    "Run one training process, its output to a log; return its result row (acc None when it failed)."
    run_dir, log = out / f'{kind}-s{seed}', out / f'{kind}-s{seed}.log'
    cmd = [str(c) for c in command(kind, a, data, seed, run_dir, fa_py)]
    say(f'{kind}, seed {seed}: {" ".join(cmd)}  (log: {log})')
    t0 = time.time()
    with open(log, 'w') as f: rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=data_env()).returncode
    total = time.time() - t0
    row = dict(run=kind, seed=seed, acc=None, sec_epoch=None, wall=None, process=round(total, 1), rc=rc)
    m = run_dir / 'metrics.json'
    if rc or not m.exists():
        say(f'{kind}, seed {seed} FAILED (exit {rc}); last lines of {log}:\n' + ''.join(open(log).readlines()[-15:]))
        return row
    rows = json.loads(m.read_text())
    row.update(acc=rows[-1]['valid_acc'], sec_epoch=statistics.mean(r['seconds'] for r in rows),
               wall=round(m.stat().st_mtime - t0, 1), epochs=len(rows))   # metrics.json's last write = the final metric
    say(f'{kind}, seed {seed}: valid acc {row["acc"]:.4f}, {row["sec_epoch"]:.1f} s/epoch, {row["wall"]:.0f}s to the final '
        f'metric ({total:.0f}s in all)')
    return row


def fmt(v, spec, none='—'): return none if v is None else format(v, spec)


def tables(results, runs):
    "Markdown: one row per run and seed, then per run the means and the ratios against fastai."
    lines = ['| run | seed | valid accuracy | s/epoch | s to final metric | process s |', '|---|---|---|---|---|---|']
    for r in results:
        lines.append(f"| {r['run']} | {r['seed']} | {fmt(r['acc'] and 100 * r['acc'], '.1f')} % | {fmt(r['sec_epoch'], '.1f')} "
                     f"| {fmt(r['wall'], '.0f')} | {fmt(r['process'], '.0f')} |")
    def mean(kind, k):
        v = [r[k] for r in results if r['run'] == kind and r[k] is not None]
        return statistics.mean(v) if v else None
    base = {k: mean('fastai', k) for k in ('acc', 'sec_epoch', 'wall')}
    lines += ['', '| run | mean valid accuracy | vs fastai (points) | s/epoch | s/epoch ÷ fastai | s to final metric | ÷ fastai |',
              '|---|---|---|---|---|---|---|']
    for kind in runs:
        m = {k: mean(kind, k) for k in ('acc', 'sec_epoch', 'wall')}
        d = None if None in (m['acc'], base['acc']) else 100 * (m['acc'] - base['acc'])
        ratio = lambda k: None if None in (m[k], base[k]) or not base[k] else m[k] / base[k]
        lines.append(f"| {RUNS[kind]} | {fmt(m['acc'] and 100 * m['acc'], '.1f')} % | {fmt(d, '+.1f')} | {fmt(m['sec_epoch'], '.1f')} "
                     f"| {fmt(ratio('sec_epoch'), '.2f')} | {fmt(m['wall'], '.0f')} | {fmt(ratio('wall'), '.2f')} |")
    return '\n'.join(lines)


def hardware():
    "CPU model and core count (and the GPU's name when the runs use one)."
    model = platform.processor() or platform.machine()
    try: model = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    return f'{model}, {os.cpu_count()} cores'


def main(argv=None):
    a = parse_args(argv)
    t_start = time.time()
    fa_py = fastai_env() if 'fastai' in a.only or a.setup else None
    if a.setup: return []
    src = Path(a.data).resolve() if a.data else imagenette_160()
    if not all((src / s).is_dir() for s in ('train', 'val')): sys.exit(f'[bench-fastai] --data {src}: needs train/ and val/ folders')
    out = Path(a.out) if a.out else ROOT / 'runs' / 'bench-fastai' / datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    out.mkdir(parents=True, exist_ok=True)
    data = src if a.limit is None else subset_folder(src, a.limit, ROOT / 'runs' / 'bench-fastai' / 'data' / f'{src.name}-n{a.limit}')
    n_train, n_valid = count_images(data)
    head = (f"{datetime.date.today()}, {hardware()}, device {a.device}; data {data} ({n_train} train / {n_valid} valid"
            f"{'' if a.limit is None else f', {a.limit} per class'}); xresnet18 (ReLU), {a.size} px, bs {a.bs}, "
            f"{a.epochs} epochs, seeds {','.join(map(str, a.seeds))}")
    say(head)
    results = []
    for seed in a.seeds:                      # per seed, the runs one after the other (the same order each time)
        for kind in a.only: results.append(run_one(kind, a, data, seed, out, fa_py))
    text = f'{head}\n\n{tables(results, a.only)}\n'
    (out / 'table.md').write_text(text)
    (out / 'results.json').write_text(json.dumps(dict(head=head, args={k: v for k, v in vars(a).items()},
                                                      results=results), indent=1, default=str))
    print(f'\n{text}\nwritten to {out} (in {time.time() - t_start:.0f}s)', flush=True)
    if any(r['acc'] is None for r in results): sys.exit('[bench-fastai] some runs failed: see their logs above')
    return results


if __name__ == '__main__': main()
