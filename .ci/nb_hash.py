"""The hash of a notebook's code cells, recorded when `dev.py notebooks` saves its outputs (nbs/outputs.json).

`dev.py test` recomputes it: a notebook whose code changed since its outputs were saved fails there, by name."""
import hashlib, json
from pathlib import Path

RECORD = 'outputs.json'

def _source(cell):
    s = cell.get('source', '')
    return ''.join(s) if isinstance(s, list) else s

def code_hash(path):
    "sha256 of the code cells' sources, in order, trailing blanks removed (ids, outputs and markdown do not count)."
    cells = json.loads(Path(path).read_text(encoding='utf-8'))['cells']
    code = [_source(c).rstrip() for c in cells if c['cell_type'] == 'code']
    return hashlib.sha256('\n\0\n'.join(code).encode()).hexdigest()

def stale(nbs_dir):
    "Names of the numbered notebooks in `nbs_dir` whose code differs from the code their outputs were made with."
    nbs_dir = Path(nbs_dir)
    rec = nbs_dir / RECORD
    hashes = json.loads(rec.read_text()) if rec.exists() else {}
    return [p.name for p in sorted(nbs_dir.glob('[0-9]*.ipynb')) if hashes.get(p.name) != code_hash(p)]
