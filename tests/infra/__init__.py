"""Tests that the deployment files under infra/ agree with the code they deploy.

No cluster, Prometheus or Grafana is involved; where `kubectl` or `promtool` is installed, the
kustomize build and the alert rules are also checked with them (skipped otherwise). The helpers
that read the files are in manifests.py.
"""
