#!/usr/bin/env python3
"""Prints the Grafana dashboard's queries as a Prometheus rules file, so that
`promtool check rules` parses every one of them (make rules-check).

Grafana's variables are replaced by values Prometheus accepts: $job by a regex, $__rate_interval
by 5m, ${datasource} is not part of a query.
"""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "ops/grafana/proconnect-introspection.json"
with open(path) as f:
    dashboard = json.load(f)

queries = []
for variable in dashboard.get("templating", {}).get("list", []):
    query = variable.get("query")
    if isinstance(query, dict) and query.get("query", "").startswith("label_values("):
        # label_values(metric, label) is Grafana's; its metric is a plain selector.
        queries.append(query["query"][len("label_values("):].split(",")[0])
for panel in dashboard.get("panels", []):
    for target in panel.get("targets", []):
        queries.append(target["expr"])
if not queries:
    sys.exit(f"{path}: no queries")

print("# Generated from", path, "by scripts/dashboard-queries.py: syntax check only.")
print("groups:")
print("- name: dashboard-queries")
print("  rules:")
for i, query in enumerate(queries):
    expr = query.replace("$job", ".+").replace("$__rate_interval", "5m")
    print(f"  - record: dashboard:query_{i}")
    print(f"    expr: {json.dumps(expr)}")
