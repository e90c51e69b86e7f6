"""The stage libraries' include paths, as CMake computed them (file(GENERATE) in
tests/CMakeLists.txt), against the data path: a stage sees only its own headers and those of the
stages it may use. A header reaching across (say the correlator including metrics.h) then fails to
compile; this check keeps the paths themselves from widening unnoticed.

    python3 tests/layering/check_layering.py BUILD_DIR/layering
"""

import os
import sys

# Which other stages each stage may see (its dependencies, transitively); common's helpers are
# everyone's.
ALLOWED = {
    "common": set(),
    "correlate": set(),
    "attribute": {"correlate"},
    "kube": {"attribute", "correlate"},
    "infer": {"attribute", "correlate"},
    "events": {"kube", "infer", "attribute", "correlate"},
    "export": {"attribute", "correlate"},
    "client": {"export", "attribute", "correlate"},
    "http": {"export", "attribute", "correlate"},
    "capture": {"correlate"},
}


def main(directory):
    root = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    agent = os.path.join(root, "agent")
    problems = []
    for stage, allowed in sorted(ALLOWED.items()):
        path = os.path.join(directory, "rstwatch_%s.includes" % stage)
        with open(path) as f:
            dirs = [d for d in f.read().strip().split(";") if d]
        seen = set()
        for d in dirs:
            d = os.path.realpath(d)
            if os.path.dirname(d) == agent:
                seen.add(os.path.basename(d))
        if stage not in seen:
            problems.append("%s: does not see its own folder (%s)" % (stage, dirs))
        extra = seen - allowed - {stage, "common"}
        if extra:
            problems.append("%s sees %s: not a stage it may use" % (stage, ", ".join(sorted(extra))))
        if "cli" in seen:
            problems.append("%s sees the cli" % stage)
        print("%-10s sees %s" % (stage, ", ".join(sorted(seen - {stage})) or "nothing else"))
    for p in problems:
        print("LAYERING: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: check_layering.py DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
