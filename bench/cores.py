"""How much of its cores this machine gives, now: the same CPU-bound loop in one process,
then in one process per core at once, round after round. A virtual machine's second core
may be a share of a host's core that other guests use too; every figure of a bench that
runs several processes at once (a web server, PostgreSQL, a load generator) depends on it.

    .venv/bin/python bench/cores.py                # 10 rounds
    .venv/bin/python bench/cores.py --rounds 30 --seconds 0.5

speedup: the cores' work done at once against one process's alone, in the same round (the
cores' count for a machine that gives them all, 1.0 for one that gives one).
"""

import argparse
import multiprocessing
import os
import time

import harness  # first: sets up sys.path and the environment


def _spin(seconds: float) -> int:
    """Loop iterations done in `seconds` of wall time."""
    done, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            pass
        done += 1
    return done


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.3, help="of each loop (default 0.3)")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    run = harness.Run()
    table = harness.Table(
        f"CPU-bound loops: one process, then {cores} at once ({args.seconds} s each)",
        ["round", "one alone (iterations)", f"{cores} at once (iterations, all)", "speedup", "machine"],
        notes=[f"speedup: {cores} processes' iterations together / one process's alone; {cores}.00 = every core whole"],
    )
    speedups = []
    with multiprocessing.Pool(cores) as pool:
        pool.map(_spin, [0.05] * cores)  # the processes started
        for r in range(1, args.rounds + 1):
            run.phase(f"round {r}")
            alone = pool.apply(_spin, (args.seconds,))
            together = sum(pool.map(_spin, [args.seconds] * cores, chunksize=1))
            speedups.append(together / alone)
            table.add(r, alone, together, f"{together / alone:.2f}", harness.machine())
    table.add("all", "", "", f"{min(speedups):.2f}-{max(speedups):.2f} (median {harness.percentiles(speedups)[0]:.2f})", "")
    harness.print_tables([table], harness.Path(args.markdown) if args.markdown else None)


if __name__ == "__main__":
    main()
