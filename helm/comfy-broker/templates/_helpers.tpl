{{/* Chart name. */}}
{{- define "cb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every resource. */}}
{{- define "cb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "cb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "cb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: comfy-broker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "cb.selector" (list . "gateway"). */}}
{{- define "cb.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "cb.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The broker image reference. */}}
{{- define "cb.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "cb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with the JWT keys and the bootstrap password. */}}
{{- define "cb.authSecret" -}}
{{- default (printf "%s-auth" (include "cb.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Name of the Secret with the external Redis password or URL ("" when none). */}}
{{- define "cb.redisSecret" -}}
{{- $e := .Values.redis.external -}}
{{- if $e.existingSecret -}}{{ $e.existingSecret }}
{{- else if $e.password -}}{{ printf "%s-redis" (include "cb.fullname" .) }}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with the S3 credentials ("" when none). */}}
{{- define "cb.s3Secret" -}}
{{- $s := .Values.files.s3 -}}
{{- if $s.existingSecret -}}{{ $s.existingSecret }}
{{- else if and $s.accessKeyId $s.secretAccessKey -}}{{ printf "%s-s3" (include "cb.fullname" .) }}
{{- end -}}
{{- end -}}

{{/* Name of the bundled Redis. */}}
{{- define "cb.redisName" -}}
{{- printf "%s-redis" (include "cb.fullname" .) -}}
{{- end -}}

{{/* Redis URL without a password (the password, if any, is added from a Secret by env). */}}
{{- define "cb.redisUrl" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- printf "redis://%s:6379/0" (include "cb.redisName" .) -}}
{{- else -}}
{{- $e := .Values.redis.external -}}
{{- printf "%s://%s:%d/%d" (ternary "rediss" "redis" $e.tls) $e.host (int $e.port) (int $e.db) -}}
{{- end -}}
{{- end -}}

{{/* The whole configuration: structured values, then `config` merged over it. Fills the dict
"out" of its argument (dict "root" $ "out" $dict): a dict, not text, so integers stay integers. */}}
{{- define "cb.config" -}}
{{- $v := .root.Values -}}
{{- $auth := dict "algorithm" $v.auth.algorithm -}}
{{- if ne $v.auth.algorithm "HS256" -}}
{{- $_ := set $auth "public_key_file" "/etc/comfy-broker/keys/jwt-public-key" -}}
{{- $_ := set $auth "private_key_file" "/etc/comfy-broker/keys/jwt-private-key" -}}
{{- end -}}
{{- $files := dict "backend" (ternary "s3" "local" (eq $v.files.backend "s3")) -}}
{{- if eq $v.files.backend "s3" -}}
{{- $s := $v.files.s3 -}}
{{- $_ := set $files "s3_bucket" $s.bucket -}}
{{- $_ := set $files "s3_path_style" $s.pathStyle -}}
{{- $_ := set $files "s3_allow_http" $s.allowHttp -}}
{{- with $s.endpoint }}{{ $_ := set $files "s3_endpoint" . }}{{ end -}}
{{- with $s.region }}{{ $_ := set $files "s3_region" . }}{{ end -}}
{{- else -}}
{{- $_ := set $files "dir" "/data/files" -}}
{{- end -}}
{{- $gateway := dict "listen" (printf "0.0.0.0:%d" (int $v.gateway.port)) "pools" $v.gateway.pools "drain_delay" (printf "%ds" (int $v.gateway.drainDelaySeconds)) -}}
{{- $worker := dict "drain_grace" (printf "%ds" (int $v.worker.drainGraceSeconds)) -}}
{{- if and (eq $v.worker.mode "deployment") $v.worker.backends -}}
{{- $_ := set $worker "backends" (include "cb.workerBackends" .root | fromYamlArray) -}}
{{- end -}}
{{- $cfg := dict "redis" (dict "key_prefix" $v.redis.keyPrefix) "auth" $auth "gateway" $gateway "worker" $worker "files" $files "log" (dict "format" $v.log.format "filter" $v.log.filter) -}}
{{- if $v.auth.bootstrapOwner -}}
{{- $_ := set $cfg "accounts" (dict "bootstrap_owner" $v.auth.bootstrapOwner) -}}
{{- end -}}
{{- if $v.metrics.enabled -}}
{{- $_ := set $cfg "metrics" (dict "enabled" true "listen" (printf "0.0.0.0:%d" (int $v.metrics.port))) -}}
{{- else -}}
{{- $_ := set $cfg "metrics" (dict "enabled" false) -}}
{{- end -}}
{{- $_ := mustMergeOverwrite .out $cfg (deepCopy $v.config) -}}
{{- include "cb.intify" (dict "m" .out) -}}
{{- end -}}

{{/* Worker backends of deployment mode, as config entries (a YAML list). */}}
{{- define "cb.workerBackends" -}}
{{- $list := list -}}
{{- range .Values.worker.backends -}}
{{- $b := dict "url" .url "pool" (default "default" .pool) -}}
{{- with .id }}{{ $_ := set $b "id" . }}{{ end -}}
{{- with .headers }}{{ $_ := set $b "headers" . }}{{ end -}}
{{- with .labels }}{{ $_ := set $b "labels" . }}{{ end -}}
{{- $list = append $list $b -}}
{{- end -}}
{{- toYaml $list -}}
{{- end -}}

{{/* Environment variables shared by gateways and workers: Redis URL, S3 credentials. */}}
{{- define "cb.commonEnv" -}}
{{- $e := .Values.redis.external -}}
{{- $rs := include "cb.redisSecret" . -}}
- name: COMFY_BROKER_CONFIG
  value: /etc/comfy-broker/config.toml
{{- if and (not .Values.redis.bundled.enabled) $e.existingSecret $e.urlKey }}
- name: COMFY_BROKER__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ $e.existingSecret }}
      key: {{ $e.urlKey }}
{{- else if and (not .Values.redis.bundled.enabled) $rs }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $rs }}
      key: {{ ternary $e.passwordKey "redis-password" (not (empty $e.existingSecret)) }}
- name: COMFY_BROKER__REDIS__URL
  value: {{ printf "%s://%s:$(REDIS_PASSWORD)@%s:%d/%d" (ternary "rediss" "redis" $e.tls) $e.username $e.host (int $e.port) (int $e.db) | quote }}
{{- else }}
- name: COMFY_BROKER__REDIS__URL
  value: {{ include "cb.redisUrl" . | quote }}
{{- end }}
{{- if and (not .Values.redis.bundled.enabled) $e.caSecret }}
- name: SSL_CERT_FILE
  value: /etc/comfy-broker/redis-ca/ca.crt
{{- end }}
{{- $s3 := include "cb.s3Secret" . -}}
{{- if and (eq .Values.files.backend "s3") $s3 }}
- name: COMFY_BROKER__FILES__S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ .Values.files.s3.accessKeyIdKey }}
- name: COMFY_BROKER__FILES__S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ .Values.files.s3.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/* Volume mounts shared by gateways and workers. */}}
{{- define "cb.commonMounts" -}}
- name: config
  mountPath: /etc/comfy-broker/config.toml
  subPath: config.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if ne .Values.files.backend "s3" }}
- name: files
  mountPath: /data/files
{{- end }}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.caSecret }}
- name: redis-ca
  mountPath: /etc/comfy-broker/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes shared by gateways and workers. */}}
{{- define "cb.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "cb.fullname" . }}-config
- name: tmp
  emptyDir: {}
{{- if ne .Values.files.backend "s3" }}
- name: files
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-files" (include "cb.fullname" .)) .Values.files.pvc.existingClaim }}
{{- end }}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.external.caSecret }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when the config or chart-managed secrets change. */}}
{{- define "cb.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* The broker container's metrics port, when metrics are on. */}}
{{- define "cb.metricsPort" -}}
{{- if .Values.metrics.enabled -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* Values files reach templates with every number as float64, and toToml would write
2097152 as 2097152.0, which integer settings reject. Turns whole floats of the map "m" into
integers, recursively, in place (the broker reads an integer as a float where it wants one). */}}
{{- define "cb.intify" -}}
{{- $m := .m -}}
{{- range $k, $v := $m -}}
{{- if kindIs "map" $v -}}
{{- include "cb.intify" (dict "m" $v) -}}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{- $_ := set $m $k (int64 $v) -}}
{{- else if kindIs "slice" $v -}}
{{- $out := list -}}
{{- range $v -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- $out = append $out (int64 .) -}}
{{- else if kindIs "map" . -}}
{{- include "cb.intify" (dict "m" .) -}}
{{- $out = append $out . -}}
{{- else -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- $_ := set $m $k $out -}}
{{- end -}}
{{- end -}}
{{- end -}}
