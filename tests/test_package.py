"""Package-level checks: every exported module imports in a fresh interpreter, and uses no name it does not define.

The undefined-name lint resolves star imports the only reliable way: it imports the module and checks every global name
that the module's code reads against the module's real namespace (plus builtins). Code that only worked because a
notebook had the name lying around in its globals fails here.
"""
import builtins, importlib, json, os, subprocess, symtable, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / 'exp').glob('nb_*.py'))


CHAIN = ['nb_00', 'nb_00a', 'nb_00b', 'nb_01', 'nb_02', 'nb_03', 'nb_04', 'nb_05', 'nb_05a', 'nb_06', 'nb_06a', 'nb_07', 'nb_08',
         'nb_08a', 'nb_08b', 'nb_09', 'nb_09a', 'nb_09b', 'nb_09c', 'nb_10', 'nb_10a']   # teaching chapters (plain numbers) and engineering ones (lettered)


def test_modules_exist():
    "The whole chain is there (a lost module must fail loudly, not shrink the parametrised tests)."
    assert MODULES == CHAIN, MODULES


@pytest.mark.parametrize('prev, mod', list(zip(CHAIN, CHAIN[1:])))
def test_each_module_imports_the_one_before(prev, mod):
    "Each module starts from the one just before it in the chain and passes its names on, so exp.nb_10a has them all."
    first = next(l for l in (ROOT / 'exp' / f'{mod}.py').read_text().splitlines() if l.startswith(('from ', 'import ')))
    assert first == f'from .{prev} import *', (mod, first)
    m, p = importlib.import_module(f'exp.{mod}'), importlib.import_module(f'exp.{prev}')
    assert set(p.__all__) <= set(m.__all__)


def test_user_draft_runs_against_nb09(tmp_path):
    "Notebook 10's first section (the user's draft), cell by cell, in a fresh interpreter that imports only exp.nb_09, ending with nb_auto_export()."
    nb = json.loads((ROOT / 'nbs' / '10_bag_of_tricks.ipynb').read_text())
    cells = [''.join(c['source']) for c in nb['cells']]
    start = next(i for i, s in enumerate(cells) if s.startswith('## The draft'))
    end = next(i for i, s in enumerate(cells) if s.startswith('## The tricks'))
    tunables = next(s for s in cells if s.startswith("IN_TEST = bool(os.environ.get('IN_TEST'))"))
    code = [s for s, c in zip(cells[start:end], nb['cells'][start:end]) if c['cell_type'] == 'code']
    script = '\n\n'.join(['from exp.nb_09 import *', tunables, *code, 'nb_auto_export()', 'print("DRAFT OK")'])
    (tmp_path / 'draft.py').write_text(script)
    env = dict(os.environ, IN_TEST='1', PYTHONPATH=str(ROOT), MPLBACKEND='Agg')
    r = subprocess.run([sys.executable, str(tmp_path / 'draft.py')], cwd=ROOT / 'nbs', env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and 'DRAFT OK' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_fresh_import(tmp_path):
    "Each module imports from an unrelated directory in a new interpreter (in chain order, as a user's import would)."
    code = f"import importlib\nfor m in {MODULES!r}: print(m, len(importlib.import_module('exp.' + m).__all__))"
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = dict(line.split() for line in r.stdout.splitlines())
    assert list(counts) == list(MODULES) and all(int(n) > 0 for n in counts.values()), r.stdout


def global_reads(code, fname):
    "Names a module's code reads as globals: module-level free reads and implicit globals inside functions/classes."
    out = set()
    def walk(t):
        for s in t.get_symbols():
            if t.get_type() == 'module':
                if s.is_referenced() and not s.is_assigned() and not s.is_imported(): out.add(s.get_name())
            elif s.is_referenced() and s.is_global():
                out.add(s.get_name())
        for c in t.get_children(): walk(c)
    walk(symtable.symtable(code, fname, 'exec'))
    return out


@pytest.mark.parametrize('mod', MODULES)
def test_no_undefined_names(mod):
    "Every global a module reads exists in that module once imported."
    m = importlib.import_module(f'exp.{mod}')
    path = ROOT / 'exp' / f'{mod}.py'
    names = global_reads(path.read_text(), str(path))
    missing = sorted(n for n in names if not hasattr(m, n) and not hasattr(builtins, n) and n not in ('__file__', '__name__', '__spec__'))
    assert not missing, f'{path.name} reads names it never defines or imports: {missing}'


def test_lint_catches_undefined(tmp_path):
    "The lint itself can fail: a function reading a notebook-only global is reported."
    code = 'import os\ndef f():\n    return os.sep + notebook_only_global\n'
    assert 'notebook_only_global' in global_reads(code, 'x.py')
    assert 'os' in global_reads(code, 'x.py')


def test_no_cuda_calls():
    "Exported code never hard-codes `.cuda()`: devices are chosen by default_device()."
    hits = [f'{p.name}:{i}' for p in (ROOT / 'exp').glob('nb_*.py')
            for i, l in enumerate(p.read_text().splitlines(), 1) if '.cuda()' in l]
    assert not hits, hits
