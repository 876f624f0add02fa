import subprocess
import sys


def test_memodb_never_imports_torch():
    code = ("import sys, memodb, memodb.feature.imgdb, memodb.feature.rawimg, "
            "memodb.feature.trans2npz, memodb.store.reader, memodb.checks.run, memodb.describe, "
            "memodb.synth, memo.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
