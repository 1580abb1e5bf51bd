#!/usr/bin/env python3
"""Builds a JavaScript example with componentize-js:

    python3 examples/js/build.py hello -o hello.wasm

`componentize-js` must be on PATH (`npm install @bytecodealliance/componentize-js@0.23.0`
puts it in node_modules/.bin; `.ci/run` does that). The world is plain
`wasi:http/proxy`, as for `wasmtime serve`.

componentize-js 0.23 embeds StarlingMonkey, which exports
`wasi:http/incoming-handler@0.2.10`, so the world names that version. The
WIT packages are the ones the Python SDK vendors (WASI 0.2.12), relabelled
0.2.10 in a temporary folder: the interfaces StarlingMonkey uses are the
same in both, and the one function 0.2.12 added (`exit-with-code`) is
marked unstable again, as it was in 0.2.10. The component's imports stay
the 0.2.x versions componentize-js chooses; fnhost links any 0.2.x.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WASI_WIT = HERE.parent.parent / "guest-sdk" / "python" / "fnhost" / "wit" / "p2"
EXPORTED = "0.2.10"
VENDORED = "0.2.12"
WORLD = f"""package fnhost:js-example;

world app {{
    include wasi:http/proxy@{EXPORTED};
}}
"""


def write_wit(folder: Path) -> None:
    deps = folder / "deps"
    deps.mkdir(parents=True)
    for source in sorted(WASI_WIT.glob("*.wit")):
        text = source.read_text()
        text = text.replace(
            f"@since(version = {VENDORED})", "@unstable(feature = cli-exit-with-code)"
        )
        text = text.replace(f"@{VENDORED}", f"@{EXPORTED}")
        (deps / source.name).write_text(text)
    (folder / "world.wit").write_text(WORLD)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", help="a folder under examples/js holding app.js")
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args()
    source = HERE / args.example / "app.js"
    if not source.is_file():
        print(f"build.py: {source}: no such file", file=sys.stderr)
        return 2
    tool = shutil.which("componentize-js")
    if tool is None:
        print(
            "build.py: componentize-js is not on PATH "
            "(npm install @bytecodealliance/componentize-js@0.23.0, then add node_modules/.bin)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        wit = Path(scratch) / "wit"
        write_wit(wit)
        built = subprocess.run(
            [tool, "--wit", str(wit), "-o", str(args.output.resolve()), str(source)],
            cwd=source.parent,
        )
    return built.returncode


if __name__ == "__main__":
    sys.exit(main())
