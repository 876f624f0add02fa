import subprocess
import sys


def test_memodb_never_imports_torch():
    code = ("import sys, memodb, memodb.imgdb, memodb.rawimg, memodb.trans2npz, memodb.reader, "
            "memodb.check, memodb.stats, memodb.synth, memo.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
