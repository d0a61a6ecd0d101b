"""Summarises the gateway's `gateway_http_requests_total` (Prometheus text on
stdin) by route, method and status, for `scripts/fuzz`."""

import collections
import re
import sys

SERIES = re.compile(r"^gateway_http_requests_total\{(?P<labels>.*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')

per_operation = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    m = SERIES.match(line.strip())
    if not m:
        continue
    labels = dict(LABEL.findall(m["labels"]))
    key = (labels.get("route", "?"), labels.get("method", "?"))
    per_operation[key][labels.get("status", "?")] += int(float(m["value"]))

# schemathesis tries every other method on every path once: one line for those.
not_allowed = collections.Counter()
for key in [k for k, c in per_operation.items() if set(c) == {"405"}]:
    not_allowed["405"] += per_operation.pop(key)["405"]
if not_allowed:
    per_operation[("(documented paths)", "other")] = not_allowed

total = sum(sum(c.values()) for c in per_operation.values())
server_errors = sum(n for c in per_operation.values() for s, n in c.items() if s.startswith("5"))
print(f"the gateway answered {total} requests, {server_errors} of them 5xx (a 503 may be documented):")
for (route, method), counts in sorted(per_operation.items(), key=lambda kv: -sum(kv[1].values())):
    detail = "  ".join(f"{status}:{n}" for status, n in sorted(counts.items()))
    print(f"  {method:7} {route:34} {sum(counts.values()):6}   {detail}")
