"""`make fuzz`: a larger fuzzing campaign over every reader of files from elsewhere (tests/fuzz_targets.py).

Each target runs in its own worker process (a fresh interpreter, so its peak resident memory is its own) for
--examples Hypothesis examples; every input must end in a result or one clear error line (a TextinvError), never
a traceback, a hang (HANG_SECONDS per input) or a jump in memory. Prints one row per target (examples tried,
results, clean errors, dirty ones, peak memory growth) and each dirty input's first line, and saves the dirty
inputs under --keep for turning into regular tests. Exit status 1 if any input was dirty or memory grew past
--max-rss-mib.

    .venv/bin/python bench/fuzz.py                       # 2000 examples per target (about 1.5 minutes)
    .venv/bin/python bench/fuzz.py --examples 50 --targets pt,state
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
def main() -> int:
    from tests.fuzz_targets import TARGETS, run_worker

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="Hypothesis examples per target")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated target names")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis's random seed (the same seed, the same inputs)")
    ap.add_argument("--keep", type=Path, default=Path("fuzz-findings"), help="where dirty inputs are saved")
    ap.add_argument("--max-rss-mib", type=int, default=512, help="peak memory growth allowed per worker")
    args = ap.parse_args()
    total: dict[str, int] = {"result": 0, "clean": 0, "dirty": 0}
    failed = False
    print(f"{'target':20} {'seeds':>5} {'tried':>6} {'result':>7} {'clean':>6} {'dirty':>6} {'peak MiB':>9} {'s':>6}")
    for name in args.targets.split(","):  # a process per target: each peak of memory is that target's own
        start = time.monotonic()
        try:
            (report,) = run_worker([name], args.examples, args.keep, args.seed)
        except RuntimeError as e:
            print(f"{name}: {e}")
            failed = True
            continue
        c = {k: report["counts"].get(k, 0) for k in total}
        for k in total:
            total[k] += c[k]
        mib = report["rss_growth_kib"] / 1024
        print(f"{name:20} {report['seeds']:5} {sum(c.values()):6} {c['result']:7} {c['clean']:6} {c['dirty']:6} "
              f"{mib:9.1f} {time.monotonic() - start:6.0f}")
        if mib > args.max_rss_mib:
            print(f"    memory grew {mib:.0f} MiB; the input at the peak: {report['peak_input']}")
        for detail, path in report["dirty"][:10]:
            print(f"    dirty: {detail[:160]}  ({path})")
        failed |= bool(c["dirty"]) or mib > args.max_rss_mib
    print(f"{'all':20} {'':5} {sum(total.values()):6} {total['result']:7} {total['clean']:6} {total['dirty']:6}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
