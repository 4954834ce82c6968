#!/usr/bin/env python3
"""Assertions over the Helm chart's rendered manifests (run by scripts/deploy-check.sh).

Subcommands:
  scenario CHART VALUES RENDERED    check one rendered ci scenario against what its values ask for
  rolls RENDERED_A RENDERED_B       the config checksum differs between two renders (config changed)
  findings TRIVY_JSON CHART_README  fail on HIGH/CRITICAL scanner findings not accepted in the README

Only the standard library and PyYAML. Every failed check is printed; the exit code is 1 if any.
"""

import copy
import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

FAILURES = []


def check(cond, msg):
    """Records a failed assertion (all of them are reported, not just the first)."""
    if not cond:
        FAILURES.append(msg)
    return bool(cond)


def deep_merge(base, over):
    """Helm's values merge: maps merge recursively, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_docs(path):
    """Parsed documents of a rendered stream, plus each document's raw text by source template."""
    text = Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    raw = {}
    for chunk in text.split("\n---\n"):
        m = re.match(r"(?:---\n)?# Source: ([^\n]+)\n", chunk)
        if m:
            raw.setdefault(m.group(1), []).append(chunk[m.end():])
    return docs, raw


def find(docs, kind, suffix=None):
    return [
        d for d in docs
        if d.get("kind") == kind and (suffix is None or d["metadata"]["name"].endswith(suffix))
    ]


def one(docs, kind, suffix):
    found = find(docs, kind, suffix)
    check(len(found) == 1, f"expected one {kind} *{suffix}, found {len(found)}")
    return found[0] if found else None


def containers(workload, init=True):
    spec = workload["spec"]["template"]["spec"]
    cs = list(spec.get("containers", []))
    if init:
        cs += spec.get("initContainers", [])
    return cs


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def secret_ref(env, name):
    e = env.get(name)
    if not e:
        return None
    return ((e.get("valueFrom") or {}).get("secretKeyRef")) or None


def broker_container(workload, name):
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    check(False, f"{workload['metadata']['name']}: no container {name}")
    return {"name": name}


def check_hardening(w):
    """Non-root, read-only root, no privilege escalation, all capabilities dropped, limits set."""
    name = f"{w['kind']}/{w['metadata']['name']}"
    pod = w["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    check(pod.get("automountServiceAccountToken") is False, f"{name}: service account token mounted")
    check((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{name}: no RuntimeDefault seccomp")
    check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), f"{name}: host namespaces")
    for c in containers(w):
        cn = f"{name}[{c['name']}]"
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        check(non_root is True, f"{cn}: runAsNonRoot not true")
        check(isinstance(uid, int) and uid > 10000, f"{cn}: runAsUser {uid!r} not > 10000")
        check(sc.get("readOnlyRootFilesystem") is True, f"{cn}: root filesystem writable")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cn}: privilege escalation allowed")
        check(not sc.get("privileged"), f"{cn}: privileged")
        check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cn}: capabilities not dropped")
        check(not ((sc.get("capabilities") or {}).get("add")), f"{cn}: capabilities added")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                check(r in (res.get(kind) or {}), f"{cn}: no {kind}.{r}")
        check(not c["image"].endswith(":latest") and (":" in c["image"] or "@" in c["image"]), f"{cn}: unpinned image {c['image']}")


def leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def scenario(chart, values_file, rendered):
    chart = Path(chart)
    scen = yaml.safe_load(Path(values_file).read_text()) or {}
    v = deep_merge(yaml.safe_load((chart / "values.yaml").read_text()), scen)
    docs, raw = load_docs(rendered)
    label = Path(values_file).name

    # --- config ---
    cm = one(docs, "ConfigMap", "-config")
    cfg = tomllib.loads(cm["data"]["config.toml"]) if cm else {}
    for path, want in leaves(v.get("config") or {}):
        got = cfg
        for p in path:
            got = got.get(p, {}) if isinstance(got, dict) else {}
        check(got == want, f"{label}: config {'.'.join(path)} = {got!r}, values say {want!r}")
    check(cfg.get("gateway", {}).get("drain_delay") == f"{v['gateway']['drainDelaySeconds']}s", f"{label}: gateway.drain_delay does not follow drainDelaySeconds")
    check(cfg.get("worker", {}).get("drain_grace") == f"{v['worker']['drainGraceSeconds']}s", f"{label}: worker.drain_grace does not follow drainGraceSeconds")
    check(cfg.get("gateway", {}).get("listen") == f"0.0.0.0:{v['gateway']['port']}", f"{label}: gateway.listen")
    check(cfg.get("redis", {}).get("key_prefix") == v["redis"]["keyPrefix"], f"{label}: redis.key_prefix")
    check("url" not in cfg.get("redis", {}), f"{label}: redis.url in the ConfigMap (it comes from the environment)")
    # No secret value from the values may appear in the ConfigMap.
    secrets = [v["auth"]["secret"], v["auth"]["bootstrapPassword"], v["auth"]["privateKey"],
               v["redis"]["external"]["password"], v["files"]["s3"]["secretAccessKey"]]
    for s in filter(None, secrets):
        check(s not in cm["data"]["config.toml"], f"{label}: a secret value is in the ConfigMap")

    # --- workloads ---
    gw = one(docs, "Deployment", "-gateway")
    sidecar = v["worker"]["mode"] == "sidecar"
    wkind = v["worker"]["sidecar"]["kind"] if sidecar else "Deployment"
    wk = one(docs, wkind, "-gpu" if sidecar else "-worker")
    workloads = find(docs, "Deployment") + find(docs, "StatefulSet")
    for w in workloads:
        check_hardening(w)
    for w in (gw, wk):
        if not w:
            continue
        ann = w["spec"]["template"]["metadata"].get("annotations") or {}
        check(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")), f"{label}: {w['metadata']['name']} has no checksum/config")
        check(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/secret", "")), f"{label}: {w['metadata']['name']} has no checksum/secret")
        cm_raw = raw.get("comfy-broker/templates/configmap.yaml", [""])[0]
        check(ann.get("checksum/config") == hashlib.sha256(cm_raw.encode()).hexdigest()
              or ann.get("checksum/config") == hashlib.sha256((cm_raw.rstrip("\n")).encode()).hexdigest()
              or ann.get("checksum/config") == hashlib.sha256((cm_raw.rstrip("\n") + "\n").encode()).hexdigest(),
              f"{label}: checksum/config is not the hash of the rendered ConfigMap")
        check(w["spec"]["template"]["spec"]["serviceAccountName"], f"{label}: no service account")

    # Gateway: probes, drain timing, secrets.
    if gw:
        g = v["gateway"]
        c = broker_container(gw, "gateway")
        rp = (c.get("readinessProbe") or {}).get("httpGet") or {}
        lp = (c.get("livenessProbe") or {}).get("httpGet") or {}
        check(rp.get("path") == "/readyz" and rp.get("port") == "http", f"{label}: gateway readiness probe is not /readyz")
        check(lp.get("path") == "/healthz" and lp.get("port") == "http", f"{label}: gateway liveness probe is not /healthz")
        check(c.get("startupProbe"), f"{label}: gateway has no startup probe")
        sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        check(sleep == g["preStopSleepSeconds"], f"{label}: gateway preStop sleep {sleep!r}")
        grace = gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # preStop, then /readyz fails for drain_delay, then sockets get ws_close_timeout (5s).
        check(grace >= g["preStopSleepSeconds"] + g["drainDelaySeconds"] + 5, f"{label}: gateway grace {grace}s shorter than its drain")
        check(c["args"] == ["gateway"], f"{label}: gateway args {c['args']}")
        env = env_of(c)
        check(env.get("COMFY_BROKER_CONFIG", {}).get("value") == "/etc/comfy-broker/config.toml", f"{label}: COMFY_BROKER_CONFIG")
        auth_secret = v["auth"]["existingSecret"] or next((d["metadata"]["name"] for d in find(docs, "Secret", "-auth")), None)
        check(auth_secret, f"{label}: no auth Secret rendered and no existingSecret")
        if v["auth"]["algorithm"] == "HS256":
            ref = secret_ref(env, "COMFY_BROKER__AUTH__SECRET")
            check(ref and ref["name"] == auth_secret and ref["key"] == "jwt-secret", f"{label}: JWT secret not from Secret {auth_secret}")
        else:
            vols = {vol["name"]: vol for vol in gw["spec"]["template"]["spec"]["volumes"]}
            keys = vols.get("jwt-keys", {}).get("secret", {})
            check(keys.get("secretName") == auth_secret, f"{label}: JWT keys not mounted from {auth_secret}")
            check(cfg["auth"].get("private_key_file", "").startswith("/etc/comfy-broker/keys/"), f"{label}: auth.private_key_file")
            check("COMFY_BROKER__AUTH__SECRET" not in env, f"{label}: HS256 secret env with {v['auth']['algorithm']}")
        if v["auth"]["bootstrapOwner"]:
            ref = secret_ref(env, "COMFY_BROKER__ACCOUNTS__BOOTSTRAP_PASSWORD")
            check(ref and ref["name"] == auth_secret and ref["key"] == "bootstrap-password", f"{label}: bootstrap password not from a Secret")
            check(cfg.get("accounts", {}).get("bootstrap_owner") == v["auth"]["bootstrapOwner"], f"{label}: bootstrap owner")
        if not v["auth"]["existingSecret"]:
            sec = one(docs, "Secret", "-auth")
            want = ["jwt-secret"] if v["auth"]["algorithm"] == "HS256" else ["jwt-private-key", "jwt-public-key"]
            if v["auth"]["bootstrapOwner"]:
                want.append("bootstrap-password")
            check(sec and sorted(sec.get("stringData", {})) == sorted(want), f"{label}: auth Secret keys")
        else:
            check(not find(docs, "Secret", "-auth"), f"{label}: auth Secret rendered despite existingSecret")
        if g["hpa"]["enabled"]:
            check("replicas" not in gw["spec"], f"{label}: gateway replicas set while the HPA is on")
            one(docs, "HorizontalPodAutoscaler", "-gateway")

    # Redis and S3 wiring, on every broker container.
    for w in (gw, wk):
        if not w:
            continue
        c = broker_container(w, "gateway" if w is gw else "worker")
        env = env_of(c)
        for e in c.get("env", []):
            if re.search(r"SECRET|PASSWORD|ACCESS_KEY", e["name"]):
                check("value" not in e, f"{label}: {e['name']} given as a literal value")
        url = env.get("COMFY_BROKER__REDIS__URL", {})
        r = v["redis"]
        if r["bundled"]["enabled"]:
            check(url.get("value", "").startswith("redis://") and url["value"].split("//")[1].split(":")[0].endswith("-redis"), f"{label}: bundled Redis URL {url}")
        else:
            ext = r["external"]
            if ext["existingSecret"] and ext["urlKey"]:
                ref = secret_ref(env, "COMFY_BROKER__REDIS__URL")
                check(ref and ref["name"] == ext["existingSecret"], f"{label}: Redis URL not from Secret")
            else:
                check(url.get("value", "").startswith("rediss://" if ext["tls"] else "redis://"), f"{label}: Redis URL scheme {url}")
                check(f"@{ext['host']}:{ext['port']}/" in url.get("value", "") or not (ext["password"] or ext["existingSecret"]), f"{label}: Redis host in URL")
                if ext["password"] or ext["existingSecret"]:
                    ref = secret_ref(env, "REDIS_PASSWORD")
                    name = ext["existingSecret"] or None
                    check(ref and (name is None or ref["name"] == name), f"{label}: Redis password not from Secret")
                    check("$(REDIS_PASSWORD)" in url.get("value", ""), f"{label}: Redis URL does not use $(REDIS_PASSWORD)")
                    names = list(env)
                    check(names.index("REDIS_PASSWORD") < names.index("COMFY_BROKER__REDIS__URL"), f"{label}: REDIS_PASSWORD defined after its use")
                if ext["caSecret"]:
                    check(env.get("SSL_CERT_FILE", {}).get("value", "").startswith("/etc/comfy-broker/redis-ca/"), f"{label}: CA not announced")
        if v["files"]["backend"] == "s3":
            s3 = v["files"]["s3"]
            check(cfg["files"].get("backend") == "s3" and cfg["files"].get("s3_bucket") == s3["bucket"], f"{label}: s3 config")
            if s3["existingSecret"] or s3["secretAccessKey"]:
                ref = secret_ref(env, "COMFY_BROKER__FILES__S3_SECRET_ACCESS_KEY")
                check(ref and (not s3["existingSecret"] or ref["name"] == s3["existingSecret"]), f"{label}: S3 secret key not from Secret")
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            check("/data/files" not in mounts, f"{label}: files PVC mounted with s3")
        else:
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            check("/data/files" in mounts, f"{label}: files volume not mounted")
            check(cfg["files"].get("dir") == "/data/files", f"{label}: files.dir")

    # Every secretKeyRef to a chart-made Secret names a key that Secret has.
    made = {d["metadata"]["name"]: d for d in find(docs, "Secret")}
    for w in workloads:
        for c in containers(w):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] in made:
                    check(ref["key"] in (made[ref["name"]].get("stringData") or {}), f"{label}: Secret {ref['name']} has no key {ref['key']}")

    # Workers: grace period, ids, sidecar shape.
    if wk:
        grace = wk["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        check(grace > v["worker"]["drainGraceSeconds"], f"{label}: worker grace {grace}s <= drain_grace")
        c = broker_container(wk, "worker")
        env = env_of(c)
        check(c["args"] == ["worker"], f"{label}: worker args {c['args']}")
        check(env.get("COMFY_BROKER__WORKER__ID", {}).get("value") == "$(POD_NAME)", f"{label}: worker id not the pod name")
        if sidecar:
            comfy = v["worker"]["sidecar"]["comfyui"]
            spec = wk["spec"]["template"]["spec"]
            where = spec.get("initContainers", []) if comfy["nativeSidecar"] else spec["containers"]
            cu = next((x for x in where if x["name"] == "comfyui"), None)
            if check(cu, f"{label}: no comfyui container"):
                if comfy["nativeSidecar"]:
                    check(cu.get("restartPolicy") == "Always", f"{label}: comfyui is not a native sidecar")
                gpus = str(((cu.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu"))
                check(gpus == str(comfy["gpus"]), f"{label}: nvidia.com/gpu {gpus}")
                check(cu.get("startupProbe") and cu.get("livenessProbe"), f"{label}: comfyui probes")
                mounts = {m["name"]: m for m in cu.get("volumeMounts", [])}
                check(mounts.get("models", {}).get("mountPath") == comfy["models"]["mountPath"], f"{label}: models not mounted")
            backends = env.get("COMFY_BROKER__WORKER__BACKENDS", {}).get("value", "")
            check(f'url="http://127.0.0.1:{comfy["port"]}"' in backends and f'pool="{v["worker"]["pool"]}"' in backends and 'id="$(POD_NAME)"' in backends,
                  f"{label}: sidecar backend {backends!r}")
            tols = spec.get("tolerations") or []
            check(any(t.get("key") == "nvidia.com/gpu" for t in tols), f"{label}: no GPU toleration")
            for k, val in (v["worker"]["sidecar"]["nodeSelector"] or {}).items():
                check((spec.get("nodeSelector") or {}).get(k) == val, f"{label}: nodeSelector {k}")
            if wkind == "StatefulSet" and not comfy["models"]["existingClaim"]:
                vct = [t["metadata"]["name"] for t in wk["spec"].get("volumeClaimTemplates", [])]
                check("models" in vct, f"{label}: no models claim template")
            if comfy["models"]["existingClaim"]:
                vols = {vol["name"]: vol for vol in spec["volumes"]}
                check(vols.get("models", {}).get("persistentVolumeClaim", {}).get("claimName") == comfy["models"]["existingClaim"], f"{label}: models claim")
        else:
            backends = cfg.get("worker", {}).get("backends", [])
            if v["worker"]["backends"]:
                check([b["url"] for b in backends] == [b["url"] for b in v["worker"]["backends"]], f"{label}: worker.backends not in config")
            if v["worker"]["backendsFromSecret"]["name"]:
                ref = secret_ref(env, "COMFY_BROKER__WORKER__BACKENDS")
                check(ref and ref["name"] == v["worker"]["backendsFromSecret"]["name"], f"{label}: backends not from Secret")

    # Bundled Redis: AOF on, persistent.
    rs = find(docs, "StatefulSet", "-redis")
    check(bool(rs) == v["redis"]["bundled"]["enabled"], f"{label}: bundled Redis rendered={bool(rs)}")
    if rs:
        args = broker_container(rs[0], "redis")["args"]
        check(args[args.index("--appendonly") + 1] == "yes", f"{label}: AOF off")
        if v["redis"]["bundled"]["persistence"]["enabled"]:
            check(rs[0]["spec"].get("volumeClaimTemplates"), f"{label}: bundled Redis without a volume")

    # PodDisruptionBudgets exactly where more than one replica can run.
    gmax = v["gateway"]["hpa"]["maxReplicas"] if v["gateway"]["hpa"]["enabled"] else v["gateway"]["replicas"]
    wmax = v["worker"]["keda"]["maxReplicaCount"] if v["worker"]["keda"]["enabled"] else v["worker"]["replicas"]
    for comp, n, enabled in (("gateway", gmax, v["gateway"]["pdb"]["enabled"]), ("worker", wmax, v["worker"]["pdb"]["enabled"])):
        pdbs = find(docs, "PodDisruptionBudget", f"-{comp}")
        check(len(pdbs) == (1 if enabled and n > 1 else 0), f"{label}: {comp} PDB count {len(pdbs)} for {n} replicas")
        for p in pdbs:
            check(p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == comp, f"{label}: {comp} PDB selector")

    # NetworkPolicy.
    nps = {d["metadata"]["name"].rsplit("-", 1)[-1]: d for d in find(docs, "NetworkPolicy")}
    if v["networkPolicy"]["enabled"]:
        for comp in ("gateway", "worker") + (("redis",) if v["redis"]["bundled"]["enabled"] else ()):
            np = nps.get(comp)
            if not check(np, f"{label}: no {comp} NetworkPolicy"):
                continue
            check(sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"], f"{label}: {comp} policy types")
            check(np["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == comp, f"{label}: {comp} policy selector")
        redis_port = 6379 if v["redis"]["bundled"]["enabled"] else v["redis"]["external"]["port"]
        for comp in ("gateway", "worker"):
            ports = {p["port"] for rule in nps.get(comp, {}).get("spec", {}).get("egress", []) for p in rule.get("ports", [])}
            check(redis_port in ports and 53 in ports, f"{label}: {comp} egress lacks Redis/DNS ({ports})")
            if v["files"]["backend"] == "s3":
                check(v["files"]["s3"]["port"] in ports, f"{label}: {comp} egress lacks the object store")
            if comp == "gateway":
                check(not (ports - {53, redis_port, v["files"]["s3"]["port"]}), f"{label}: gateway egress too wide {ports}")
        if "redis" in nps:
            froms = nps["redis"]["spec"]["ingress"][0]["from"]
            comps = sorted(f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in froms)
            check(comps == ["gateway", "worker"], f"{label}: Redis reachable from {comps}")
            check(nps["redis"]["spec"]["egress"] == [], f"{label}: Redis may connect out")
    else:
        check(not nps, f"{label}: NetworkPolicy rendered while disabled")

    # Metrics, ServiceMonitor, KEDA, ingress, dashboard.
    m = v["metrics"]
    if m["enabled"]:
        check(cfg.get("metrics", {}).get("listen") == f"0.0.0.0:{m['port']}", f"{label}: metrics.listen")
        for w in (gw, wk):
            if w:
                c = broker_container(w, "gateway" if w is gw else "worker")
                check(any(p.get("name") == "metrics" and p["containerPort"] == m["port"] for p in c.get("ports", [])), f"{label}: no metrics port on {c['name']}")
    else:
        check(cfg.get("metrics", {}).get("enabled") is False, f"{label}: metrics off in values but not in config.toml")
    sms = find(docs, "ServiceMonitor")
    if m["enabled"] and m["serviceMonitor"]["enabled"]:
        check(len(sms) == 1 and sms[0]["spec"]["endpoints"][0]["port"] == "metrics", f"{label}: ServiceMonitor")
        check(len(find(docs, "PodMonitor")) == 1, f"{label}: PodMonitor for workers")
        svc = one(docs, "Service", "-gateway")
        check(svc and any(p["name"] == "metrics" for p in svc["spec"]["ports"]), f"{label}: gateway Service lacks the metrics port")
        for k, val in m["serviceMonitor"]["labels"].items():
            check(sms and sms[0]["metadata"]["labels"].get(k) == val, f"{label}: ServiceMonitor label {k}")
    else:
        check(not sms, f"{label}: ServiceMonitor rendered while disabled")
    sos = find(docs, "ScaledObject")
    if v["worker"]["keda"]["enabled"]:
        if check(len(sos) == 1, f"{label}: no ScaledObject"):
            so = sos[0]["spec"]
            check(so["scaleTargetRef"]["name"] == wk["metadata"]["name"] and so["scaleTargetRef"]["kind"] == wkind, f"{label}: ScaledObject target")
            check("replicas" not in wk["spec"], f"{label}: worker replicas set while KEDA scales it")
            q = so["triggers"][0]["metadata"]["query"]
            check(f'pool="{v["worker"]["pool"]}"' in q and "comfy_broker_queue_pending_jobs" in q, f"{label}: KEDA query {q}")
            check(so["maxReplicaCount"] == v["worker"]["keda"]["maxReplicaCount"], f"{label}: KEDA max")
    else:
        check(not sos, f"{label}: ScaledObject rendered while disabled")
    ing = find(docs, "Ingress")
    if v["gateway"]["ingress"]["enabled"]:
        if check(len(ing) == 1, f"{label}: no Ingress") and v["gateway"]["ingress"]["controller"] == "nginx":
            ann = ing[0]["metadata"].get("annotations") or {}
            check(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout") == str(v["gateway"]["ingress"]["websocketTimeoutSeconds"]), f"{label}: WebSocket timeout annotation")
    else:
        check(not ing, f"{label}: Ingress rendered while disabled")
    dash = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    if v["grafana"]["dashboard"]["enabled"]:
        if check(len(dash) == 1, f"{label}: no dashboard ConfigMap"):
            d = dash[0]
            for k, val in v["grafana"]["dashboard"]["labels"].items():
                check(d["metadata"]["labels"].get(k) == val, f"{label}: dashboard label {k}")
            body = json.loads(d["data"]["comfy-broker.json"])
            check(body.get("panels"), f"{label}: dashboard has no panels")
    else:
        check(not dash, f"{label}: dashboard rendered while disabled")


def rolls(a, b):
    def sums(path):
        docs, _ = load_docs(path)
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in find(docs, "Deployment") + find(docs, "StatefulSet")
                if "checksum/config" in (d["spec"]["template"]["metadata"].get("annotations") or {})}
    sa, sb = sums(a), sums(b)
    check(sa and sa.keys() == sb.keys(), "rolls: not the same workloads")
    for k in sa:
        check(sa[k] != sb.get(k), f"rolls: {k} keeps its checksum/config when the config changes")


def accepted_findings(readme):
    """IDs (optionally ID@resource) in the README's 'Accepted scanner findings' table."""
    text = Path(readme).read_text()
    m = re.search(r"^## Accepted scanner findings\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    check(m, f"{readme}: no '## Accepted scanner findings' section")
    out = set()
    for line in (m.group(1) if m else "").splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"(AVD-)?[A-Z]+-?\d+", cells[0]):
            check(len(cells[3]) > 10, f"{readme}: accepted finding {cells[0]} has no reason")
            out.add((cells[0], cells[1]))
    return out


def findings(trivy_json, readme):
    accepted = accepted_findings(readme)
    data = json.loads(Path(trivy_json).read_text())
    counts = {}
    for r in data.get("Results") or []:
        for f in r.get("Misconfigurations") or []:
            if f.get("Status", "FAIL") != "FAIL":
                continue
            sev = f["Severity"]
            counts[sev] = counts.get(sev, 0) + 1
            msg = f"{r['Target']}: {f['ID']} {sev} {f['Title']}: {f.get('Message', '')}"
            ok = any(fid in (f["ID"], f.get("AVDID")) and (res in ("*", "") or res in f.get("Message", ""))
                     for fid, res in accepted)
            if sev in ("HIGH", "CRITICAL") and not ok:
                check(False, "scanner: " + msg)
            else:
                print(("accepted " if ok else "") + msg)
    print("scanner findings by severity:", counts or "none")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "scenario" and len(argv) == 5:
        scenario(*argv[2:])
    elif cmd == "rolls" and len(argv) == 4:
        rolls(*argv[2:])
    elif cmd == "findings" and len(argv) == 4:
        findings(*argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for f in FAILURES:
        print("FAIL:", f, file=sys.stderr)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
