"""Offline checks of deploy/: the Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate --strict, where an unknown kind, which it only warns about, fails
too), and the settings the manifests and the compose file give Ponte, loaded by the
`ponte` binary itself (values read from secret files are left out: they are not here).

Usage: python check_deploy.py PONTE_BIN   (from the repository root, in the venv)
"""

import glob
import os
import subprocess
import sys
import tempfile

import yaml

DEPLOY = "deploy"


def fail(message):
    print(f"check_deploy: {message}", file=sys.stderr)
    sys.exit(1)


def validate_manifests(files):
    validator = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    run = subprocess.run([validator, "--strict", *files], capture_output=True, text=True)
    out = run.stdout + run.stderr
    print(out, end="")
    if run.returncode != 0 or "WARN" in out or "ERROR" in out:
        fail("the Kubernetes manifests do not validate")


def ponte_accepts(ponte, env, toml=None, what=""):
    """Runs `ponte openapi` (it loads and checks the whole configuration first)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PONTE_")}
    clean.update({k: v for k, v in env.items() if not k.endswith("_FILE") and k != "PONTE_CONFIG"})
    with tempfile.TemporaryDirectory() as scratch:
        if toml is not None:
            path = os.path.join(scratch, "ponte.toml")
            with open(path, "w") as f:
                f.write(toml)
            clean["PONTE_CONFIG"] = path
        run = subprocess.run([ponte, "openapi"], cwd=scratch, env=clean, capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"ponte refuses the configuration of {what}: {run.stderr.strip()}")


def check_kubernetes(ponte, files):
    docs = [d for f in files for d in yaml.safe_load_all(open(f)) if d]
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        maps = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
        for container in spec["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            toml = None
            for name in maps:
                if name not in config_maps:
                    fail(f"{doc['kind']} {doc['metadata']['name']} mounts ConfigMap {name}, which deploy/ lacks")
                toml = config_maps[name].get("ponte.toml", toml)
            ponte_accepts(ponte, env, toml, f"{doc['kind']} {doc['metadata']['name']}")


def check_compose(ponte):
    compose = yaml.safe_load(open(os.path.join(DEPLOY, "compose.yaml")))
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if any(k.startswith("PONTE_") for k in env):
            ponte_accepts(ponte, {k: str(v) for k, v in env.items()}, None, f"compose service {name}")


def main():
    if len(sys.argv) != 2:
        fail("usage: check_deploy.py PONTE_BIN")
    ponte = os.path.abspath(sys.argv[1])
    files = sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml")))
    if not files:
        fail("no manifests under deploy/kubernetes")
    validate_manifests(files)
    check_kubernetes(ponte, files)
    check_compose(ponte)
    print(f"check_deploy: {len(files)} manifests valid; ponte accepts their settings and the compose file's")


main()
