"""Summarise a py-spy ``--format raw`` profile: ``python -m bench.profile_report FILE [N]``.

Prints the functions with the most samples on the stack (inclusive) and at the top of the
stack (self), as a share of all samples, so the biggest per-task cost can be named.
"""

from __future__ import annotations

import sys
from collections import Counter


def summarise(path: str, top: int = 25, within: str = "run_forever") -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as lines:
        for line in lines:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or within not in stack:
                continue  # start-up imports and shutdown are not the per-task cost
            count = int(count_text)
            total += count
            frames = stack.split(";")
            for frame in set(frames):
                inclusive[frame] += count
            own[frames[-1]] += count
    out = [f"{total} samples inside {within!r}", "", "inclusive:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25))
