"""Checks deploy/k8s/*.yaml: every resource against the Kubernetes OpenAPI
schemas bundled in the `kubernetes-validate` package (strict: unknown fields
are errors), offline; then what a schema cannot see: probes on /health and
/live, a grace period that covers preStop plus kiln's --shutdown-timeout,
selectors that match the pods, the Secret the pods read, the KEDA trigger on
the served model's vllm:num_requests_waiting, and that every `--flag` (and
every KILN_* variable, such as KILN_STORE from the Secret) the Deployments
pass is one `kiln serve --help` lists.

Usage: python deploy/check_manifests.py KILN_BINARY [KUBERNETES_VERSION]
Exit status 0 when everything holds; each failure is printed.
KEDA's ScaledObject is a custom resource with no schema in the package: its
fields are checked here by hand (see `check_scaled_object`).
"""

import glob
import os
import re
import subprocess
import sys

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def load():
    docs = []
    for path in sorted(glob.glob(os.path.join(HERE, "k8s", "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.append((os.path.relpath(path, HERE), doc))
    return docs


def schema_check(docs, version):
    for path, doc in docs:
        name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            print("ok  ", name, "against Kubernetes", version)
        except kubernetes_validate.SchemaNotFoundError:
            if doc.get("apiVersion", "").startswith("keda.sh/"):
                print("skip", name, "(custom resource: checked by hand below)")
            else:
                fail(f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {'.'.join(str(p) for p in e.path)}: {e.message}")


def flag(args, name):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def check_deployment(path, d, docs, help_text):
    spec = d["spec"]["template"]["spec"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    (c,) = spec["containers"]
    args = c.get("args", [])
    where = f"{path}: {d['metadata']['name']}"
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/health":
        fail(f"{where}: readiness must probe /health")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/live":
        fail(f"{where}: liveness must probe /live")
    timeout = int(flag(args, "shutdown-timeout") or 30)
    sleep = 0
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(pre) == 2 and pre[0] == "sleep":
        sleep = int(pre[1])
    else:
        fail(f"{where}: preStop should sleep while the endpoint removal spreads")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < sleep + timeout + 5:
        fail(f"{where}: terminationGracePeriodSeconds {grace} < preStop {sleep} + --shutdown-timeout {timeout} + 5")
    port = int(flag(args, "port") or 8000)
    if not any(p.get("containerPort") == port and p.get("name") == "http" for p in c.get("ports", [])):
        fail(f"{where}: containerPort 'http' is not --port {port}")
    if flag(args, "host") != "0.0.0.0":
        fail(f"{where}: --host=0.0.0.0 is needed to serve outside the pod")
    for a in args:
        m = re.match(r"--([a-z0-9-]+)", a)
        if m and not re.search(rf"--{re.escape(m.group(1))}(?![a-z0-9-])", help_text):
            fail(f"{where}: kiln serve has no flag --{m.group(1)}")
    for env in c.get("env", []):
        # kiln's own variables must be ones a flag reads: `[env: KILN_X=value]`,
        # or `[env: KILN_X]` for flags whose values help hides (keys, store URL).
        if env["name"].startswith("KILN_") and not re.search(rf"\[env:\s+{re.escape(env['name'])}[=\]]", help_text):
            fail(f"{where}: env {env['name']} is read by no kiln serve flag")
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secrets = [x for _, x in docs if x["kind"] == "Secret" and x["metadata"]["name"] == ref["name"]]
            if not secrets or ref["key"] not in secrets[0].get("stringData", secrets[0].get("data", {})):
                fail(f"{where}: env {env['name']} reads secret {ref['name']}/{ref['key']}, which is not in deploy/k8s")
    for _, x in docs:
        sel = None
        if x["kind"] == "Service":
            sel = x["spec"]["selector"]
        elif x["kind"] == "PodDisruptionBudget":
            sel = x["spec"]["selector"]["matchLabels"]
        if sel is not None and not all(labels.get(k) == v for k, v in sel.items()):
            fail(f"{x['kind']} {x['metadata']['name']} does not select the pods of {where}")
    return flag(args, "served-model-name")


def check_scaled_object(path, s, deployments):
    spec = s["spec"]
    target = spec["scaleTargetRef"]
    if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
        fail(f"{path}: scaleTargetRef {target} is no Deployment of deploy/k8s")
        return
    model = deployments[target["name"]]
    if not 1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
        fail(f"{path}: minReplicaCount must be at least 1 and at most maxReplicaCount")
    known = {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
    for t in spec["triggers"]:
        if set(t) - known:
            fail(f"{path}: unknown trigger fields {set(t) - known}")
        if t["type"] != "prometheus":
            continue
        md = t["metadata"]
        for key in ("serverAddress", "query", "threshold"):
            if not isinstance(md.get(key), str):
                fail(f"{path}: prometheus trigger needs metadata.{key} as a string")
        q = md.get("query", "")
        if "vllm:num_requests_waiting" not in q or f'model_name="{model}"' not in q:
            fail(f"{path}: the query should read vllm:num_requests_waiting of model_name=\"{model}\": {q}")


def main():
    kiln = sys.argv[1]
    version = sys.argv[2] if len(sys.argv) > 2 else kubernetes_validate.latest_version()
    help_text = subprocess.run([kiln, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    docs = load()
    schema_check(docs, version)
    deployments = {}
    for path, d in docs:
        if d["kind"] == "Deployment":
            deployments[d["metadata"]["name"]] = check_deployment(path, d, docs, help_text)
    if len(deployments) < 2:
        fail("expected a CPU and a GPU Deployment")
    kinds = {d["kind"] for _, d in docs}
    for want in ("Service", "PodDisruptionBudget", "Secret", "ScaledObject"):
        if want not in kinds:
            fail(f"no {want} in deploy/k8s")
    for path, d in docs:
        if d["kind"] == "ScaledObject":
            check_scaled_object(path, d, deployments)
    print(f"{len(docs)} resources, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
