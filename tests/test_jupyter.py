"Notebooks as a JupyterLab reader meets them: saved clean, one progress bar per fit, good outputs."
import json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / 'nbs').glob('*.ipynb'))
BIN = Path(sys.executable).parent
jupyter_client = pytest.importorskip('jupyter_client')
nbformat = pytest.importorskip('nbformat')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    "A Jupyter server of this Python's environment on 127.0.0.1 (random port and token)."
    def __init__(self, root, env, log):
        port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f'http://127.0.0.1:{port}'
        args = [f'--ServerApp.port={port}', '--ServerApp.port_retries=0',
                '--ServerApp.ip=127.0.0.1', f'--IdentityProvider.token={self.token}',
                '--ServerApp.open_browser=False', '--ServerApp.allow_root=True',
                f'--ServerApp.root_dir={root}']
        with open(log, 'w') as f:
            self.proc = subprocess.Popen([sys.executable, '-m', 'jupyter_server', *args],
                                         cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT)
        if not self._ready():
            self.stop()
            raise RuntimeError(f'no Jupyter server:\n{Path(log).read_text()[-2000:]}')

    def _ready(self, tries=600):
        for _ in range(tries):
            try: return self.api('GET', 'status') is not None
            except urllib.error.HTTPError: return False
            except urllib.error.URLError:
                if self.proc.poll() is not None: return False
                time.sleep(0.1)
        return False

    def stop(self):
        self.proc.terminate()
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill()

    def api(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f'{self.url}/api/{path}', data=data, method=method,
                                     headers={'Authorization': f'token {self.token}'})
        with urllib.request.urlopen(req, timeout=60) as r: return json.loads(r.read())


@pytest.fixture(scope='module')
def jupyter(tmp_path_factory):
    "A server over a copy of the notebooks, with the hooks `dev.py setup` installs (own HOME)."
    tmp = tmp_path_factory.mktemp('jupyter')
    root, home = tmp / 'project', tmp / 'home'
    home.mkdir()
    shutil.copytree(ROOT / 'nbs', root / 'nbs')
    shutil.copy(ROOT / 'settings.ini', root)
    env = {k: v for k, v in os.environ.items() if not k.startswith('JUPYTER')}
    env.update(HOME=str(home), JUPYTER_RUNTIME_DIR=str(tmp / 'runtime'))
    subprocess.run(['git', 'init', '-q'], cwd=root, check=True)
    hooks = [BIN / 'nbdev_install_hooks']
    subprocess.run(hooks, cwd=root, env=env, check=True, capture_output=True)
    srv = Server(root, env, tmp / 'server.log')
    try: yield srv, root
    finally: srv.stop()


def _kernel_metadata(srv):
    "The metadata JupyterLab sets on opening a notebook: kernelspec, the kernel's language_info."
    specs = srv.api('GET', 'kernelspecs')
    name = specs['default']
    spec = specs['kernelspecs'][name]['spec']
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name=name)
    try: info = kc.kernel_info(reply=True, timeout=30)['content']['language_info']
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    ks = dict(name=name, display_name=spec['display_name'], language=spec['language'])
    return dict(kernelspec=ks, language_info=info)


def test_open_and_save_in_jupyter_changes_nothing(jupyter):
    "Every notebook, opened and saved through the contents API as JupyterLab does, keeps its bytes."
    srv, root = jupyter
    meta = _kernel_metadata(srv)
    changed = []
    for p in NBS:
        path = f'nbs/{p.name}'
        before = (root / path).read_bytes()
        nb = srv.api('GET', f'contents/{path}?content=1&type=notebook')['content']
        nb['metadata'].update(meta)
        for c in nb['cells']: c['source'] = ''.join(c['source'])   # JupyterLab sends a string
        srv.api('PUT', f'contents/{path}', dict(type='notebook', format='json', content=nb))
        if (root / path).read_bytes() != before: changed.append(p.name)
    assert changed == []


# ------------------------------------------------------------------ one progress display per fit
FIT = '''\
import sys; sys.path.insert(0, {root!r})
from exp.nb_05a import *
run = Runner(cbs=[ProgressCallback(), AvgStatsCallback(accuracy)])
run.fit(2, synth_learner())'''


def _display_messages(src):
    "The display_data and update_display_data messages of cell `src`, run in a real ipykernel."
    from nbclient import NotebookClient
    msgs = []
    class Client(NotebookClient):
        def process_message(self, msg, cell, cell_index):
            if msg['msg_type'] in ('display_data', 'update_display_data'): msgs.append(msg)
            return super().process_message(msg, cell, cell_index)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
    res = dict(metadata=dict(path=str(ROOT)))
    Client(nb, kernel_name='python3', timeout=300, resources=res).execute()
    return [(m['msg_type'], m['content'].get('transient', {}).get('display_id'),
             m['content']['data'].get('text/html', '')) for m in msgs]


def test_one_progress_display_per_fit():
    "A fit with ProgressCallback in Jupyter: one display (CSS once), ending as the epoch table."
    msgs = _display_messages(FIT.format(root=str(ROOT)))
    ids = {i for _, i, _ in msgs if i is not None}
    assert len(ids) == 1, f'{len(ids)} progress displays'
    css = [t for t, i, h in msgs if i is None and '<style>' in h]
    assert css == ['display_data']
    last = [h for t, i, h in msgs if i is not None][-1]
    assert '<table' in last and 'train_loss' in last and '<progress' not in last


def test_progress_bar_when_fit_starts_at_a_later_epoch(capsys):
    "A callback moving start_epoch (a resumed run, notebook 05a) still gets a bar and a table."
    from exp.nb_05a import Runner, ProgressCallback, AvgStatsCallback, Callback, accuracy
    from exp.nb_05a import synth_learner
    class Resume(Callback):
        def begin_fit(self): self.run.start_epoch = 1
    run = Runner(cbs=[ProgressCallback(show=True), AvgStatsCallback(accuracy), Resume()])
    run.fit(3, synth_learner())
    rows = re.findall(r'[\r\n](\d+) ', capsys.readouterr().out)   # the table's rows: epochs
    assert rows == ['1', '2']


# ------------------------------------------------------------------------------- saved outputs
MACHINE_PATH = re.compile(r'(/root/|/tmp/|/work/|/home/)')
PIPE_TABLE = re.compile(r'^[ \t]*(\|[ \t]*:?-{3,}|:?-{3,}:?[ \t]*\|)', re.M)   # |---|---| line
PLAIN = ('text/plain', 'stream stdout', 'stream stderr')
ALLOWED_STDERR = {}   # (notebook, cell id): why the chapter shows this stderr text


def _text(v): return ''.join(v) if isinstance(v, list) else v


def _texts(o):
    "The texts of output `o`, by kind."
    if o['output_type'] == 'stream': return {'stream ' + o['name']: _text(o['text'])}
    res = {k: _text(v) for k, v in o.get('data', {}).items() if k.startswith('text/')}
    if o['output_type'] == 'error': res['traceback'] = '\n'.join(o['traceback'])
    return res


def output_faults(path):
    "(cell id, fault, text) for what a reader should not meet in `path`'s saved outputs."
    faults = []
    for c in json.loads(Path(path).read_text(encoding='utf-8'))['cells']:
        for o in c.get('outputs', []):
            for kind, t in _texts(o).items():
                if kind == 'stream stderr' and (Path(path).name, c['id']) not in ALLOWED_STDERR:
                    faults.append((c['id'], 'stderr', t[:80]))
                if kind in PLAIN and PIPE_TABLE.search(t):
                    faults.append((c['id'], f'pipe table as {kind}', t[:80]))
                m = MACHINE_PATH.search(t)
                if m: faults.append((c['id'], f'machine path in {kind}', t[m.start():m.end() + 40]))
    return faults


@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_saved_outputs_read_well(path):
    "No stderr, no pipe table shown as text, no machine path in a notebook's saved outputs."
    assert output_faults(path) == []


def test_output_scan_finds_each_fault(tmp_path):
    "The scan itself: each kind of fault in a saved output is found, a '---' line is no table."
    out = nbformat.v4.new_output
    outs = [out('stream', name='stdout', text='--- SGD (lr 0.4)\n'),
            out('stream', name='stderr', text='a notice\n'),
            out('stream', name='stdout', text='| a | b |\n|---|---|\n| 1 | 2 |\n'),
            out('display_data', data={'text/plain': 'Path("/tmp/tmpab12/x.pt")'})]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x', outputs=outs)])
    p = tmp_path / 'x.ipynb'
    nbformat.write(nb, p)
    kinds = [f for _, f, _ in output_faults(p)]
    assert kinds == ['stderr', 'pipe table as stream stdout', 'machine path in text/plain']
