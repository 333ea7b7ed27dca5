"""Speed of the generated demo data (moved here from the tests: no timing asserts in tests).

    python -m bench.demo_generation [--n 200] [--repeats 5]

Prints milliseconds per generated radiograph/report pair (median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time

from vlp.data.demo import DemoDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="pairs generated per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    ap.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    args = ap.parse_args()
    data = DemoDataset(args.n, args.image_size)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(args.n):
            data[i]
        times.append((time.perf_counter() - start) / args.n)
    print(f"demo pair generation at {args.image_size} px: {1e3 * statistics.median(times):.2f} "
          f"ms/pair (median of {args.repeats} x {args.n})")


if __name__ == "__main__":
    main()
