"""Compile the RTP receive path with mypyc: `rtp/reorder.py`, `rtp/fast.py` and
`rtp/psframe.py`, as the extension modules `rtp/_reorder_native`, `rtp/_fast_native` and
`rtp/_psframe_native` (and their library, `rtp/_native__mypyc`); and with them the C extensions
`rtp/_startcode` (`rtp/_startcode.c`), the start code search of the compiled `rtp/psframe.py`,
and `sensing_node/transport/_drain` (`_drain.c`), which reads a UDP stream's datagrams many per
system call.

The node runs the same code either way; compiled, the event loop calls the fast path of an
RTP packet with no Python frame (`rtp.fast`), the reorder buffer's calls from it are calls
into C, and so is the per-frame demuxer (`rtp.psframe`). The compiled modules get their own
names, so that they never shadow the sources, and carry the SHA-256 of the sources they were
built from (`SOURCE_SHA256`, the C source included): `sensing_node.transport.native` uses them
only while the sources still have that digest. The compiled `rtp/psframe.py` imports
`rtp._startcode` (see `REPLACE`); the pure Python never does, so a stale C build goes unused
with the rest.
Without mypyc or a C compiler this prints why and leaves the pure Python in use (exit status
0); `--strict`, or `SENSING_NODE_REQUIRE_NATIVE=1` in the environment (as CI sets it), makes
that an error.

    python tools/build_native.py [--strict]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: source module -> the compiled module's name, in the order they import each other
MODULES = {"reorder": "_reorder_native", "fast": "_fast_native", "psframe": "_psframe_native"}
GROUP = "rtp._native"
#: C extension modules built with them: module name -> its source, from the repository's root
EXTENSIONS = {
    "rtp._startcode": "rtp/_startcode.c",  # the compiled rtp/psframe.py's start code search
    "sensing_node.transport._drain": "sensing_node/transport/_drain.c",  # UDP reads (recvmmsg)
}
#: source module -> (line, what its compiled module has in its place); each line must be there
REPLACE = {
    "psframe": ("_find_start = _search_start\n",
                "from rtp._startcode import find as _find_start\n"),
}

SETUP = f"""
from setuptools import Extension, setup
from mypyc.build import mypycify

setup(name="rtp-native", ext_modules=mypycify(
    [{", ".join(repr(f"rtp/{name}.py") for name in MODULES.values())}], group_name={GROUP!r})
    + [{", ".join(f"Extension({name!r}, [{source!r}])" for name, source in EXTENSIONS.items())}])
"""


def digest() -> str:
    """The SHA-256 of the sources, in `MODULES` order, then the C sources in `EXTENSIONS`
    order (what `transport.native` checks)."""
    h = hashlib.sha256()
    for name in MODULES:
        h.update((ROOT / "rtp" / f"{name}.py").read_bytes())
    for source in EXTENSIONS.values():
        h.update((ROOT / source).read_bytes())
    return h.hexdigest()


def _product(name: str) -> Path:
    """Where the built extension module `name` goes, relative to the root, without suffix."""
    return Path(*name.split("."))


def built() -> list[Path]:
    """What a build left (not the C sources and stubs of `EXTENSIONS`)."""
    stems = [Path("rtp", name) for name in (*MODULES.values(), "_native__mypyc")]
    stems += [_product(name) for name in EXTENSIONS]
    return sorted(p for stem in stems for p in (ROOT / stem.parent).glob(f"{stem.name}.*")
                  if p.suffix not in (".c", ".pyi"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="fail when it cannot compile")
    args = parser.parse_args()
    args.strict = args.strict or bool(os.environ.get("SENSING_NODE_REQUIRE_NATIVE"))
    for old in built():
        old.unlink()
    stamp = f'\n\nSOURCE_SHA256 = "{digest()}"\n'
    with tempfile.TemporaryDirectory(prefix="native-") as tmp:
        stage = Path(tmp)
        shutil.copytree(ROOT / "rtp", stage / "rtp",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        for source in EXTENSIONS.values():
            (stage / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, stage / source)
        for name, compiled in MODULES.items():
            text = (ROOT / "rtp" / f"{name}.py").read_text()
            for other, other_compiled in MODULES.items():  # compiled imports compiled
                text = text.replace(f"from rtp.{other} import", f"from rtp.{other_compiled} import")
            if name in REPLACE:
                line, replacement = REPLACE[name]
                if text.count(line) != 1:  # never a compiled module that differs silently
                    raise SystemExit(f"rtp/{name}.py must hold {line.strip()!r} exactly once")
                text = text.replace(line, replacement)
            (stage / "rtp" / f"{compiled}.py").write_text(text + stamp)
        (stage / "setup.py").write_text(SETUP)
        done = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=stage, capture_output=True, text=True,
        )
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        stems = [Path("rtp", name) for name in (*MODULES.values(), "_native__mypyc")]
        stems += [_product(name) for name in EXTENSIONS]
        products = [stem.with_name(stem.name + suffix) for stem in stems]
        if done.returncode or not all((stage / p).exists() for p in products):
            why = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print("rtp.fast not compiled (the pure Python is used): " + " | ".join(why),
                  file=sys.stderr)
            return 1 if args.strict else 0
        for product in products:
            shutil.copy2(stage / product, ROOT / product)
    sources = [f"rtp/{name}.py" for name in MODULES] + list(EXTENSIONS.values())
    print(f"compiled {', '.join(sources)} into " + ", ".join(map(str, products)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
