"""The operator's process stays small: importing it must not load torch (the chart gives it 256Mi)."""

from __future__ import annotations

import subprocess
import sys


def test_operator_imports_without_torch():
    probe = "import sys, eaas.operator.handlers, eaas.operator.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_mempool_names_still_import_on_demand():
    import eaas.mempool as mempool
    from eaas.mempool.codec import encode_block

    assert mempool.encode_block is encode_block
    assert {"KVPool", "LoadRecorder", "RegistryReader", "SyncKVPool"} <= set(mempool.__all__)
