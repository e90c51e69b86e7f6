#!/usr/bin/env python3
"""Writes a seccomp profile that lets rstwatch load BPF with CAP_BPF and CAP_PERFMON.

    scripts/seccomp-profile.py [/usr/share/containers/seccomp.json] > rstwatch-seccomp.json

containerd (>= 1.7) and Docker (>= 23) allow bpf() to containers holding CAP_BPF and
perf_event_open() to those holding CAP_PERFMON in their default profile (RuntimeDefault).
The default profile of CRI-O and podman (containers/common's seccomp.json) allows both only
with CAP_SYS_ADMIN, so there rstwatch's DaemonSet (BPF and PERFMON, no SYS_ADMIN) gets EPERM
from bpf(). This script takes such a profile and adds exactly the two capability-gated rules
containerd and Docker have, nothing else: use its output as a Localhost profile
(securityContext.seccompProfile: {type: Localhost, localhostProfile: ...}, docs/deploy.md#seccomp)
on CRI-O nodes, or with `podman run --security-opt seccomp=FILE`.

The input is read from the file given (default: the installed containers/common profile) or
from "-" (standard input); the result goes to standard output.
"""

import json
import sys

GATED = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def widen(profile):
    syscalls = profile.get("syscalls")
    if not isinstance(syscalls, list):
        raise ValueError("not a seccomp profile: no \"syscalls\" list")
    out = []
    for rule in syscalls:
        names = rule.get("names") or ([rule["name"]] if "name" in rule else [])
        excluded = (rule.get("excludes") or {}).get("caps") or []
        # The "deny unless CAP_SYS_ADMIN" rule would also apply to a container holding only
        # CAP_BPF: take bpf/perf_event_open out of it (re-added below with their own gate).
        if rule.get("action") == "SCMP_ACT_ERRNO" and "CAP_SYS_ADMIN" in excluded and set(names) & GATED.keys():
            rest = [n for n in names if n not in GATED]
            if rest:
                rule = dict(rule, names=rest)
                rule.pop("name", None)
                out.append(rule)
            continue
        out.append(rule)
    for name, cap in GATED.items():
        out.append({"names": [name], "action": "SCMP_ACT_ALLOW", "args": [],
                    "comment": "rstwatch: allowed with %s, as containerd and Docker do" % cap,
                    "includes": {"caps": [cap]}, "excludes": {}})
        # Neither capability: EPERM as before (not the profile's default errno, often ENOSYS).
        out.append({"names": [name], "action": "SCMP_ACT_ERRNO", "args": [], "errnoRet": 1,
                    "comment": "rstwatch: denied without CAP_SYS_ADMIN or %s" % cap,
                    "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN", cap]}})
    return dict(profile, syscalls=out)


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        sys.stderr.write(__doc__)
        return 2 if len(argv) > 2 else 0
    path = argv[1] if len(argv) == 2 else "/usr/share/containers/seccomp.json"
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        profile = json.loads(text)
        result = widen(profile)
    except (OSError, ValueError) as e:
        sys.stderr.write("seccomp-profile.py: %s: %s\n" % (path, e))
        return 1
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
