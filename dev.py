#!/usr/bin/env python3
"""One entry point for people and CI: sets up what it needs, then runs the job.

    python3 dev.py train [exp-train options]   the main job: train the bag-of-tricks CNN (Imagenette-160 by default)
    python3 dev.py test                         the whole test suite (what CI runs)
    python3 dev.py notebooks [nbs/NN_*.ipynb]   execute notebooks top to bottom and save them with outputs
    python3 dev.py test-nb nbs/NN_*.ipynb       run one notebook's tests (nbdev_test, small sizes)
    python3 dev.py bench                        CPU benchmarks (Runner vs bare loop, data pipeline, ceiling): tables
    python3 dev.py bench-fastai [options]       exp-train vs fastai 2.8.12's recipe, same data and budget (own venv)
    python3 dev.py docs [--check]               build the website into _docs/ (tools in their own venv); --check: links
    python3 dev.py setup                        only create/refresh .venv (and nbdev's Jupyter save hook)

Everything is idempotent: the virtual environment `.venv` is created once and refreshed only when settings.ini changes.
Data: `EXP_DATA` (default ~/exp-data) is where archives go; `EXP_DATA_MIRROR` names a local folder holding the archives
(consulted before the internet). When the mirror is unset and `../shared/data` exists beside the checkout, it is used.
"""
import hashlib, os, subprocess, sys, time, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / '.venv'
BIN = VENV / ('Scripts' if os.name == 'nt' else 'bin')
PY = BIN / ('python.exe' if os.name == 'nt' else 'python')
STAMP = VENV / '.exp-setup-stamp'


def say(msg): print(f'[dev] {msg}', flush=True)


def sh(*cmd, check=True, **kw):
    "Run a command from the repo root, echoing it; when it fails and `check`, exit with its exit code."
    say(' '.join(map(str, cmd)))
    r = subprocess.run([str(c) for c in cmd], cwd=kw.pop('cwd', ROOT), **kw)
    if check and r.returncode:
        say(f'failed ({r.returncode}): {" ".join(map(str, cmd))}')
        sys.exit(r.returncode if 0 < r.returncode < 256 else 1)
    return r


def venv_works():
    "True when .venv has a Python that can run pip (a half-created venv, e.g. interrupted, has no pip)."
    return PY.exists() and subprocess.run([str(PY), '-m', 'pip', '--version'], capture_output=True).returncode == 0


def setup():
    "Create .venv and install the project with its tools, unless settings.ini is unchanged since the last setup."
    if sys.version_info < (3, 10): sys.exit('[dev] Python >= 3.10 is needed; run this with a newer python3.')
    want = hashlib.sha256((ROOT / 'settings.ini').read_bytes() + (ROOT / 'dev.py').read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == want: return
    if not venv_works():
        say(f'{"re" if VENV.exists() else ""}creating virtual environment {VENV}')
        try: venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        except Exception as e:
            sys.exit(f'[dev] could not create {VENV} ({e}); on Debian/Ubuntu install python3-venv, then run this again')
    # settings.ini holds every requirement with tested ranges; the [dev] extra pins nbdev 2 and its tools.
    sh(PY, '-m', 'pip', 'install', '-q', '--upgrade', 'pip')
    sh(PY, '-m', 'pip', 'install', '-q', '-e', '.[dev]')
    # nbdev's hooks: Jupyter cleans a notebook on save as nbdev_clean does (jupyter_hooks = True in settings.ini; the
    # hook goes into ~/.jupyter), and git merges notebooks with nbdev_merge (not possible in a git worktree).
    r = sh(BIN / 'nbdev_install_hooks', check=False, capture_output=True, text=True)
    if r.returncode: say('nbdev_install_hooks failed: ' + r.stderr.strip().rsplit('\n', 1)[-1])
    STAMP.write_text(want)


def data_env():
    "Environment for child processes: the shared mirror beside the checkout when no mirror is configured."
    env = dict(os.environ)
    shared = ROOT.parent / 'shared' / 'data'
    if 'EXP_DATA_MIRROR' not in env and shared.is_dir():
        env['EXP_DATA_MIRROR'] = str(shared)
        say(f'EXP_DATA_MIRROR={shared}')
    return env


def snapshot(folder, pattern):
    "The contents of the files matching `pattern` in `folder`, by name."
    return {p.name: p.read_bytes() for p in sorted((ROOT / folder).glob(pattern))}


def check_unchanged(cmd, folder, pattern, what, env):
    "Run `cmd` (a generator such as nbdev_export) and fail when it changed any `folder/pattern` file."
    before = snapshot(folder, pattern)
    sh(*cmd, env=env)
    after = snapshot(folder, pattern)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed: sys.exit(f'[dev] {what}: {", ".join(f"{folder}/{c}" for c in changed)} changed. '
                         f'They now hold the regenerated version: review them (git diff) and commit.')
    say(f'{what}: no changes')


def check_outputs_fresh():
    "Fail when a notebook's code changed after `dev.py notebooks` saved its outputs (hashes in nbs/outputs.json)."
    sys.path.insert(0, str(ROOT / '.ci'))
    from nb_hash import stale
    old = stale(ROOT / 'nbs')
    if old: sys.exit(f'[dev] saved outputs older than the code in: {", ".join(old)}. Re-execute them with '
                     f'`python3 dev.py notebooks {" ".join("nbs/" + n for n in old)}`, check the prose against '
                     f'the new outputs, and commit the notebooks with nbs/outputs.json.')
    say('notebook outputs: every notebook saved from its current code')


def test(args):
    "Export drift, nbdev_clean drift, pytest, every notebook under nbdev_test."
    env = data_env()
    t0 = time.time()
    # exp/ must be exactly what nbdev_export makes of nbs/ (a hand edit or a stale module fails here), and
    # notebooks must already be clean of volatile metadata.
    check_unchanged([BIN / 'nbdev_export'], 'exp', '*.py', 'export drift (exp/ vs nbdev_export of nbs/)', env)
    check_unchanged([BIN / 'nbdev_clean'], 'nbs', '*.ipynb', 'nbdev_clean drift (volatile notebook metadata)', env)
    check_outputs_fresh()
    r = sh(PY, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests', *args, check=False, env=env)
    if r.returncode == 5: sys.exit('[dev] pytest collected no tests: the tests/ folder lost its tests')
    if r.returncode: sys.exit(f'[dev] pytest failed ({r.returncode})')
    env1 = dict(env, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')  # two notebooks at a time on two cores
    sh(BIN / 'nbdev_test', '--n_workers', '2', '--timing', env=env1)
    say(f'all tests passed in {time.time() - t0:.0f}s')


DOCS_VENV = ROOT / '.venv-docs'
DOCS_TOOLS = ('mkdocs==1.6.1', 'mkdocs-material==9.7.7', 'mkdocs-jupyter==0.26.3')   # README: "The website"


def docs(args):
    "Build the website into _docs/ (.ci/docs.py); the pinned DOCS_TOOLS live in .venv-docs, installed on first use."
    py = DOCS_VENV / BIN.name / PY.name
    stamp = DOCS_VENV / '.exp-docs-stamp'
    if not (py.exists() and stamp.exists() and stamp.read_text() == ' '.join(DOCS_TOOLS)):
        t0 = time.time()
        say(f'installing the docs tools into {DOCS_VENV}')
        venv.EnvBuilder(with_pip=True, clear=True).create(DOCS_VENV)
        sh(py, '-m', 'pip', 'install', '-q', *DOCS_TOOLS)
        stamp.write_text(' '.join(DOCS_TOOLS))
        say(f'docs tools installed in {time.time() - t0:.0f}s')
    sh(PY, ROOT / '.ci' / 'docs.py', '--mkdocs', py, *args)


COMMANDS = ('setup', 'test', 'train', 'notebooks', 'test-nb', 'bench', 'bench-fastai', 'docs')


def main(argv):
    if not argv or argv[0] in ('-h', '--help', 'help'): return print(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd not in COMMANDS: sys.exit(f'[dev] unknown command {cmd!r}: choose one of {", ".join(COMMANDS)} (python3 dev.py help)')
    setup()
    if cmd == 'setup': return
    if cmd == 'test': return test(args)
    if cmd == 'train': return sh(PY, '-m', 'exp.nb_10a', *args, env=data_env())
    if cmd == 'notebooks': return sh(PY, ROOT / '.ci' / 'exec_nb.py', *args, env=data_env())
    if cmd == 'test-nb': return sh(BIN / 'nbdev_test', '--path', *args, '--do_print', env=data_env())
    if cmd == 'bench':
        sh(PY, ROOT / 'tests' / 'bench_runner.py', *args, env=data_env())
        bp = ROOT / 'tests' / 'bench_pipeline.py'
        if bp.exists(): sh(PY, bp, *args, env=data_env())
        sh(PY, ROOT / 'tests' / 'bench_ceiling.py', *[a for a in args if a == '--quick'], env=data_env())
        return
    if cmd == 'bench-fastai': return sh(PY, ROOT / 'tests' / 'bench_fastai.py', *args, env=data_env())
    if cmd == 'docs': return docs(args)


if __name__ == '__main__': main(sys.argv[1:])
