"""Run every benchmark script in this folder (quick mode in CI) and fail if any fails.

Each script prints its own figures and exits non-zero when it misses a target; this
runner only sequences them and summarises. Usage: python benchmarks/run_all.py [--quick] [NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    every = sorted(p for p in HERE.glob("*.py") if p.name != "run_all.py" and not p.name.startswith("_"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick mode (what CI runs)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"only these ({', '.join(p.stem for p in every)})")
    args = parser.parse_args(argv)
    unknown = set(args.names) - {p.stem for p in every}
    if unknown:
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}")
    quick = args.quick
    scripts = [p for p in every if not args.names or p.stem in args.names]
    failed = []
    for script in scripts:
        print(f"\n=== {script.name}{' --quick' if quick else ''} ===", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])], cwd=HERE.parent)
        print(f"--- {script.name}: exit {proc.returncode}, {time.perf_counter() - t:.1f} s", flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
    print(f"\nbenchmarks: {len(scripts) - len(failed)} passed, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
