#!/usr/bin/env python3
"""Execute notebooks top to bottom (no kernel needed) and save them with their outputs.

Usage: python .ci/exec_nb.py nbs/03_minibatch_training.ipynb [...]   (default: every nbs/[0-9]*.ipynb)
       --test   run in test mode (IN_TEST=1: smaller data), do not save
Cells flagged `#| eval: false` or calling nbdev_export are skipped; `#| cuda` cells run only when CUDA is present.
A notebook that raises is reported and left unchanged on disk. A saved notebook's code hash goes into
nbs/outputs.json (see code_hash), so that `dev.py test` can tell when code changed after its outputs were made.
"""
import os, sys, time, glob, json, tempfile, traceback
from pathlib import Path
from nb_hash import code_hash, RECORD

def directives(src):
    "The `#| ...` flags at the top of a cell's source, as a set of words."
    flags = set()
    for line in src.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith('#|'): break
        flags.update(s[2:].replace(':', ': ').split())
    return flags

def should_skip(cell, has_cuda):
    "True for cells that a headless run must not execute."
    if cell.cell_type != 'code': return True
    src = cell.source
    if 'nbdev_export(' in src: return True
    f = directives(src)
    if 'eval:' in f and 'false' in f: return True
    if 'cuda' in f and not has_cuda: return True
    return False

def record(p):
    "Write `p`'s code hash into the record beside it (atomically: the record is read by every test run)."
    rec = p.parent / RECORD
    hashes = json.loads(rec.read_text()) if rec.exists() else {}
    hashes[p.name] = code_hash(p)
    tmp = rec.with_suffix('.tmp')
    tmp.write_text(json.dumps(dict(sorted(hashes.items())), indent=1) + '\n')
    os.replace(tmp, rec)

def main(argv):
    test = '--test' in argv
    paths = [a for a in argv if not a.startswith('--')] or sorted(glob.glob('nbs/[0-9]*.ipynb'))
    if test: os.environ['IN_TEST'] = '1'
    else: os.environ.pop('IN_TEST', None)
    from execnb.shell import CaptureShell
    from execnb.nbio import read_nb, nb2dict
    import nbformat   # writes outputs the way Jupyter does (execnb keeps one-line strings)
    import torch
    has_cuda = torch.cuda.is_available()
    failed = []
    for p in map(Path, paths):
        t0 = time.time()
        sh = CaptureShell(p.parent.resolve(), mpl_format='png')
        nb = read_nb(p)
        for c in nb.cells:   # a cell that now prints nothing must not keep what an older run printed
            if not should_skip(c, has_cuda): c.outputs, c.execution_count = [], None
        sh._fname = p
        try:
            cwd = os.getcwd(); os.chdir(p.parent)
            try: sh.run_all(nb, exc_stop=True, preproc=lambda c: should_skip(c, has_cuda))
            finally: os.chdir(cwd)
        except BaseException:
            print(f'FAILED {p} after {time.time()-t0:.0f}s\n' + sh.prettytb(fname=p), flush=True)
            failed.append(p); continue
        if not test:
            fd, tmp = tempfile.mkstemp(suffix='.ipynb', dir=p.parent); os.close(fd)
            nbformat.write(nbformat.from_dict(nb2dict(nb)), tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)
            os.system(f'"{Path(sys.executable).parent}/nbdev_clean" --fname "{p}"')
            record(p)
        print(f'ok {p} {time.time()-t0:.0f}s', flush=True)
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
