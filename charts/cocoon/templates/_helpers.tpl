{{/*
Shared pieces. Every per-service template calls them with a context made by "cocoon.ctx":
  dict "root" $ "name" "<service>" "svc" (index $.Values.services "<service>")
*/}}

{{- define "cocoon.fullname" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cocoon.selectorLabels" -}}
app.kubernetes.io/name: cocoon
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "cocoon.labels" -}}
{{ include "cocoon.selectorLabels" . }}
app.kubernetes.io/part-of: cocoon
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Each service's image is its own repository, <repository>-<service> (the Dockerfile's
target of that name); `image.perService: false` runs one image for all (Tilt's dev image). */}}
{{- define "cocoon.image" -}}
{{- $image := .root.Values.image -}}
{{- $repository := ternary (printf "%s-%s" $image.repository .name) $image.repository $image.perService -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* Environment every service gets. Secrets appear only as file paths. */}}
{{- define "cocoon.env" -}}
{{- $v := .root.Values -}}
- name: COCOON_SERVICE_NAME
  value: {{ .name | quote }}
- name: COCOON_ENVIRONMENT
  value: {{ $v.environment | quote }}
- name: COCOON_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if eq (default "" .svc.kafkaUser) $v.kafka.scram.user }}
- name: COCOON_KAFKA_BOOTSTRAP
  value: {{ $v.kafka.scram.bootstrap | quote }}
{{- else }}
- name: COCOON_KAFKA_BOOTSTRAP
  value: {{ $v.kafka.bootstrap | quote }}
{{- end }}
- name: COCOON_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "deployment.environment=%s,k8s.namespace.name=%s" (default "default" $v.environment) .root.Release.Namespace | quote }}
- name: COCOON_LISTEN_HOST
  value: "0.0.0.0"
- name: COCOON_GRPC_HEALTH_PORT
  value: {{ $v.ports.health | quote }}
- name: COCOON_METRICS_PORT
  value: {{ $v.ports.metrics | quote }}
- name: COCOON_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: COCOON_LOG_FORMAT
  value: {{ $v.logFormat | quote }}
- name: COCOON_SHUTDOWN_GRACE_SECONDS
  value: {{ $v.shutdownGraceSeconds | quote }}
- name: COCOON_CACHE_DIR
  value: /tmp/cocoon-cache
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- if and $v.kafka.tls.enabled (eq (default "" .svc.kafkaUser) $v.kafka.scram.user) }}
{{- /* A worker's host: the enrolment SCRAM user only (its own credential comes sealed). */}}
- name: COCOON_KAFKA_SECURITY_PROTOCOL
  value: SASL_SSL
- name: COCOON_KAFKA_SSL_CAFILE
  value: /var/run/secrets/kafka/ca/ca.crt
- name: COCOON_KAFKA_SASL_USERNAME
  value: {{ printf "%s%s" $v.kafka.tls.userSecretPrefix .svc.kafkaUser | quote }}
- name: COCOON_KAFKA_SASL_PASSWORD_FILE
  value: /var/run/secrets/kafka/user/password
{{- else if $v.kafka.tls.enabled }}
- name: COCOON_KAFKA_SECURITY_PROTOCOL
  value: SSL
- name: COCOON_KAFKA_SSL_CAFILE
  value: /var/run/secrets/kafka/ca/ca.crt
- name: COCOON_KAFKA_SSL_CERTFILE
  value: /var/run/secrets/kafka/user/user.crt
- name: COCOON_KAFKA_SSL_KEYFILE
  value: /var/run/secrets/kafka/user/user.key
{{- end }}
{{- range $id := .svc.secrets }}
{{- $secret := index $v.secrets $id | required (printf "secrets.%s is not defined" $id) }}
- name: {{ $secret.env }}
  value: {{ printf "/var/run/secrets/cocoon/%s/%s" (kebabcase $id) $secret.key | quote }}
{{- end }}
{{- range $name, $value := .svc.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "cocoon.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .root.Values.kafka.tls.enabled }}
- name: kafka-ca
  mountPath: /var/run/secrets/kafka/ca
  readOnly: true
- name: kafka-user
  mountPath: /var/run/secrets/kafka/user
  readOnly: true
{{- end }}
{{- range $id := .svc.secrets }}
- name: {{ printf "secret-%s" (kebabcase $id) }}
  mountPath: {{ printf "/var/run/secrets/cocoon/%s" (kebabcase $id) }}
  readOnly: true
{{- end }}
{{- with .svc.persistence }}{{ if .enabled }}
- name: data
  mountPath: {{ .mountPath }}
{{- end }}{{ end }}
{{- end -}}

{{- define "cocoon.volumes" -}}
{{- $v := .root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if $v.kafka.tls.enabled }}
- name: kafka-ca
  secret:
    secretName: {{ $v.kafka.tls.clusterCaSecret }}
    items:
      - {key: ca.crt, path: ca.crt}
- name: kafka-user
  secret:
    secretName: {{ printf "%s%s" $v.kafka.tls.userSecretPrefix (default .name .svc.kafkaUser) }}
{{- end }}
{{- range $id := .svc.secrets }}
{{- $secret := index $v.secrets $id }}
- name: {{ printf "secret-%s" (kebabcase $id) }}
  {{- if $secret.configMapName }}
  configMap:
    name: {{ $secret.configMapName }}
    defaultMode: 0444
  {{- else }}
  secret:
    secretName: {{ $secret.secretName }}
    defaultMode: 0440
  {{- end }}
    items:
      - {key: {{ $secret.key }}, path: {{ $secret.key }}}
{{- end }}
{{- with .svc.persistence }}{{ if .enabled }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "cocoon.fullname" $ }}-data
{{- end }}{{ end }}
{{- end -}}

{{/* The service's own container: `cocoon run <name>` with gRPC health probes. */}}
{{- define "cocoon.container" -}}
{{- $v := .root.Values -}}
- name: {{ .name }}
  image: {{ include "cocoon.image" . }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["run", {{ .name | quote }}]
  ports:
    - name: health
      containerPort: {{ $v.ports.health }}
      protocol: TCP
    - name: metrics
      containerPort: {{ $v.ports.metrics }}
      protocol: TCP
    {{- if .svc.http }}
    - name: http
      containerPort: {{ $v.ports.http }}
      protocol: TCP
    {{- end }}
    {{- if .svc.grpc }}
    - name: grpc
      containerPort: {{ $v.ports.grpc }}
      protocol: TCP
    {{- end }}
  env:
    {{- include "cocoon.env" . | nindent 4 }}
    {{- if .svc.http }}
    # The API must be reachable through the pod's IP (the Service), not only its loopback.
    - name: COCOON_HTTP_HOST
      value: "0.0.0.0"
    - name: COCOON_HTTP_PORT
      value: {{ $v.ports.http | quote }}
    {{- end }}
    {{- if .svc.grpc }}
    - name: COCOON_INFERENCE_GRPC_PORT
      value: {{ $v.ports.grpc | quote }}
    {{- end }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    grpc:
      port: {{ $v.ports.health }}
      service: {{ .name | quote }}
    {{- toYaml $v.probes.startup | nindent 4 }}
  readinessProbe:
    grpc:
      port: {{ $v.ports.health }}
      service: {{ .name | quote }}
    {{- toYaml $v.probes.readiness | nindent 4 }}
  livenessProbe:
    grpc:
      port: {{ $v.ports.health }}
    {{- toYaml $v.probes.liveness | nindent 4 }}
  resources:
    {{- toYaml .svc.resources | nindent 4 }}
  securityContext:
    {{- toYaml (.securityContext | default $v.securityContext) | nindent 4 }}
  volumeMounts:
    {{- include "cocoon.volumeMounts" . | nindent 4 }}
{{- end -}}

{{/* Pod spec fields shared by Deployments and the worker-proxy StatefulSet. */}}
{{- define "cocoon.podSpecCommon" -}}
{{- $v := .root.Values -}}
automountServiceAccountToken: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
enableServiceLinks: false
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with .svc.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .svc.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .svc.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .svc.affinity }}
affinity:
  {{- toYaml .svc.affinity | nindent 2 }}
{{- else }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "cocoon.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{- define "cocoon.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cocoon.fullname" . }}
  labels:
    {{- include "cocoon.labels" . | nindent 4 }}
spec:
  {{- if not .svc.autoscaling.enabled }}
  replicas: {{ .svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- if eq (default "RollingUpdate" .svc.strategy) "Recreate" }}
    type: Recreate  # never two pods at once (billing: one transactional id)
    {{- else }}
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 0}
    {{- end }}
  selector:
    matchLabels:
      {{- include "cocoon.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cocoon.labels" . | nindent 8 }}
    spec:
      {{- include "cocoon.podSpecCommon" . | nindent 6 }}
      containers:
        {{- include "cocoon.container" . | nindent 8 }}
      volumes:
        {{- include "cocoon.volumes" . | nindent 8 }}
{{- end -}}

{{/* The service's own PersistentVolumeClaim (`persistence:`), e.g. billing's payout store. */}}
{{- define "cocoon.pvc" -}}
{{- with .svc.persistence }}{{ if .enabled }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "cocoon.fullname" $ }}-data
  labels:
    {{- include "cocoon.labels" $ | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep  # payouts in flight outlive an uninstall
spec:
  accessModes: [ReadWriteOnce]
  {{- with .storageClassName }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ .size }}
{{- end }}{{ end }}
{{- end -}}

{{- define "cocoon.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cocoon.fullname" . }}
  labels:
    {{- include "cocoon.labels" . | nindent 4 }}
spec:
  {{- if .headless }}
  clusterIP: None
  publishNotReadyAddresses: false
  {{- end }}
  selector:
    {{- include "cocoon.selectorLabels" . | nindent 4 }}
  ports:
    - name: health
      port: {{ .root.Values.ports.health }}
      targetPort: health
      appProtocol: grpc
    - name: metrics
      port: {{ .root.Values.ports.metrics }}
      targetPort: metrics
    {{- if .svc.http }}
    - name: http
      port: {{ .root.Values.ports.http }}
      targetPort: http
      appProtocol: http
    {{- end }}
    {{- if .svc.grpc }}
    - name: grpc
      port: {{ .root.Values.ports.grpc }}
      targetPort: grpc
      appProtocol: grpc
    {{- end }}
{{- end -}}

{{- define "cocoon.hpa" -}}
{{- if .svc.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "cocoon.fullname" . }}
  labels:
    {{- include "cocoon.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ default "Deployment" .svc.kind }}
    name: {{ include "cocoon.fullname" . }}
  minReplicas: {{ .svc.autoscaling.minReplicas }}
  maxReplicas: {{ .svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .svc.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300  # a rebalance per scale-down: do it rarely
{{- end }}
{{- end -}}

{{- define "cocoon.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cocoon.fullname" . }}
  labels:
    {{- include "cocoon.labels" . | nindent 4 }}
spec:
  {{- toYaml .svc.pdb | nindent 2 }}
  selector:
    matchLabels:
      {{- include "cocoon.selectorLabels" . | nindent 6 }}
{{- end -}}

{{- define "cocoon.serviceMonitor" -}}
{{- $sm := .root.Values.serviceMonitor -}}
{{- if $sm.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "cocoon.fullname" . }}
  labels:
    {{- include "cocoon.labels" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "cocoon.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      # The runtime's metrics carry their own `service` label (cocoon_service_ready{service}):
      # keep it, instead of Prometheus renaming it exported_service under its target label.
      honorLabels: true
      interval: {{ $sm.interval }}
      scrapeTimeout: {{ $sm.scrapeTimeout }}
{{- end }}
{{- end -}}

{{/* Everything a plain (Deployment) service has; `.name` picks it from .Values.services. */}}
{{- define "cocoon.standardService" -}}
{{- $ctx := dict "root" .root "name" .name "svc" (index .root.Values.services .name) -}}
{{- if $ctx.svc.enabled }}
{{ include "cocoon.deployment" $ctx }}
---
{{ include "cocoon.service" $ctx }}
---
{{ include "cocoon.pdb" $ctx }}
{{- with (include "cocoon.hpa" $ctx) }}
---
{{ . }}
{{- end }}
{{- with (include "cocoon.pvc" $ctx) }}
---
{{ . }}
{{- end }}
{{- with (include "cocoon.serviceMonitor" $ctx) }}
---
{{ . }}
{{- end }}
{{- end }}
{{- end -}}
