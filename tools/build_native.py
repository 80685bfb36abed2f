"""Compile `rtp/fast.py` with mypyc into `rtp/_fast_native` (an extension module beside it).

The node runs the same code either way; compiled, the event loop calls the fast path of an
RTP packet with no Python frame (`rtp.fast`). The compiled module carries the SHA-256 of the
source it was built from (`SOURCE_SHA256`), and `sensing_node.transport.native` uses it only
while `rtp/fast.py` still has that digest, so an edited source is never shadowed by an old
build. Without mypyc or a C compiler this prints why and leaves the pure Python in use (exit
status 0); `--strict` makes that an error.

    python tools/build_native.py [--strict]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "rtp" / "fast.py"
MODULE = "_fast_native"


def built() -> list[Path]:
    return sorted((ROOT / "rtp").glob(f"{MODULE}.*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="fail when it cannot compile")
    args = parser.parse_args()
    for old in built():
        old.unlink()
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    with tempfile.TemporaryDirectory(prefix="native-") as tmp:
        stage = Path(tmp)
        shutil.copytree(ROOT / "rtp", stage / "rtp",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        (stage / "rtp" / f"{MODULE}.py").write_bytes(
            source + f'\n\nSOURCE_SHA256 = "{digest}"\n'.encode())
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", f"rtp/{MODULE}.py"],
            cwd=stage, capture_output=True, text=True,
        )
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        # The module, and the library mypyc puts its code in (`<module>__mypyc`).
        products = sorted((stage / "rtp").glob(f"{MODULE}*{suffix}"))
        if done.returncode or not (stage / "rtp" / f"{MODULE}{suffix}").exists():
            why = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print("rtp.fast not compiled (the pure Python is used): " + " | ".join(why),
                  file=sys.stderr)
            return 1 if args.strict else 0
        for product in products:
            shutil.copy2(product, ROOT / "rtp" / product.name)
    print("compiled rtp/fast.py into " + ", ".join(f"rtp/{p.name}" for p in products))
    return 0


if __name__ == "__main__":
    sys.exit(main())
