"""`python -m bench [--quick] [--only B1,B3] [--profile]`: run the suite, write the results.

Exit status 1 when any measurement could not be made (a comparator that would not run, an
API that is not there): a ratio against nothing must never read as a pass. A missed goal is
reported in the table, not in the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from bench import report
from bench.lab import Lab
from bench.stats import failed

BENCHES = {
    "B1": "bench.b1_sync",
    "B2": "bench.b2_resync",
    "B3": "bench.b3_api",
    "B4": "bench.b4_search",
    "B5": "bench.b5_send",
    "B6": "bench.b6_idle",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. B1,B3")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the project's side once (pyinstrument / py-spy) into bench/results/",
    )
    args = parser.parse_args(argv)
    chosen = [b.strip().upper() for b in args.only.split(",") if b.strip()] or list(BENCHES)
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    args.chosen = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    size = "quick" if args.quick else "full"
    lab = Lab(quick=args.quick)
    lab.profiling = args.profile
    results = []
    print(f"bench: {size} run of {', '.join(args.chosen)}", flush=True)
    try:
        lab.start()
        for bench in args.chosen:
            began = time.monotonic()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            print(f"bench: {bench} ...", flush=True)
            try:
                result = importlib.import_module(BENCHES[bench]).run(lab, args.quick)
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc()
                result = report.Result(
                    bench, [failed(bench, "run", f"{type(exc).__name__}: {exc}")]
                )
            result.ran_at, result.seconds = stamp, time.monotonic() - began
            results.append(result)
            for row in result.rows:
                ratio = f" ratio {row.ratio:.3g}" if row.ratio is not None else ""
                state = f" ERROR {row.error}" if row.error else f" met={row.met}"
                print(
                    f"bench: {bench} {row.metric}: {row.project.median:.4g} {row.unit}"
                    f"{ratio}{state}",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("bench: interrupted; saving what finished", file=sys.stderr)
        interrupted = True
    else:
        interrupted = False
    finally:
        lab.stop(keep_logs=any(r.failed for r in results))
    if results:
        data = report.save(size, results)
        print(report.table({**data, "benchmarks": {r.bench: r.as_dict() for r in results}}))
        print(f"bench: results in {report.RESULTS}/{size}.md, .json and .png")
    if interrupted:
        return 130
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
