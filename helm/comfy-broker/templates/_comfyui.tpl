{{/* The ComfyUI container of sidecar-mode GPU pods: include (list $ nativeSidecar). */}}
{{- define "cb.comfyuiContainer" -}}
{{- $root := index . 0 -}}
{{- $c := $root.Values.worker.sidecar.comfyui -}}
- name: comfyui
  image: {{ printf "%s:%s" $c.image.repository $c.image.tag }}
  imagePullPolicy: {{ $c.image.pullPolicy }}
  {{- with $c.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if index . 1 }}
  restartPolicy: Always
  {{- else }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ add $root.Values.worker.drainGraceSeconds 5 }}
  {{- end }}
  {{- with $c.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: comfyui
      containerPort: {{ $c.port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /system_stats
      port: comfyui
    periodSeconds: {{ $c.startupProbe.periodSeconds }}
    failureThreshold: {{ $c.startupProbe.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /system_stats
      port: comfyui
    periodSeconds: 20
    timeoutSeconds: 10
    failureThreshold: 6
  resources:
    {{- $res := deepCopy $c.resources }}
    {{- if $c.gpus }}
    {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" $c.gpus) (default (dict) $res.limits)) }}
    {{- end }}
    {{- toYaml $res | nindent 4 }}
  securityContext:
    {{- toYaml $c.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $c.models.mountPath }}
      readOnly: {{ not (empty $c.models.existingClaim) }}
    {{- range $i, $p := $c.writablePaths }}
    - name: comfyui-rw-{{ $i }}
      mountPath: {{ $p }}
    {{- end }}
{{- end }}
