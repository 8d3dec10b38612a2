{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "stratopt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified release name; the side suffixes (-command, -query, -migrate) still fit in 63 characters. */}}
{{- define "stratopt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stratopt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stratopt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stratopt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "stratopt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stratopt
{{- end }}

{{- define "stratopt.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret names: an existing Secret when named, else the one this chart creates. */}}
{{- define "stratopt.databaseSecret" -}}
{{- default (printf "%s-database" (include "stratopt.fullname" .)) .Values.database.existingSecret }}
{{- end }}
{{- define "stratopt.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}
{{- define "stratopt.tlsSecret" -}}
{{- default (printf "%s-tls" (include "stratopt.fullname" .)) .Values.tls.existingSecret }}
{{- end }}
{{- define "stratopt.jwtSecret" -}}
{{- default (printf "%s-jwt" (include "stratopt.fullname" .)) .Values.auth.jwt.existingSecret }}
{{- end }}
{{- define "stratopt.jwtSecretKey" -}}
{{- if .Values.auth.jwt.existingSecret }}{{ .Values.auth.jwt.existingSecretKey }}{{ else }}jwt-public-keys{{ end }}
{{- end }}

{{/* "true" when mTLS client certificates carry the identity (a client roles file is configured). */}}
{{- define "stratopt.clientRoles" -}}
{{- if and .Values.tls.enabled .Values.tls.clientAuth (or .Values.tls.clientRoles .Values.tls.clientRolesExistingSecret) }}true{{ end }}
{{- end }}
{{- define "stratopt.clientRolesSecret" -}}
{{- default (printf "%s-client-roles" (include "stratopt.fullname" .)) .Values.tls.clientRolesExistingSecret }}
{{- end }}

{{/* Checks of values that the JSON schema cannot express. */}}
{{- define "stratopt.validate" -}}
{{- if and (not .Values.database.url) (not .Values.database.existingSecret) }}
{{- fail "set database.url or database.existingSecret (the external PostgreSQL + TimescaleDB)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) }}
{{- fail "tls.enabled needs tls.existingSecret, or tls.cert and tls.key" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth needs tls.enabled" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.existingSecret) (not .Values.tls.clientCA) }}
{{- fail "tls.clientAuth needs tls.clientCA (or ca.crt in tls.existingSecret)" }}
{{- end }}
{{- if and (or .Values.tls.clientRoles .Values.tls.clientRolesExistingSecret) (not .Values.tls.clientAuth) }}
{{- fail "tls.clientRoles needs tls.clientAuth (client certificates)" }}
{{- end }}
{{- if and .Values.auth.jwt.enabled (not .Values.auth.jwt.existingSecret) (not .Values.auth.jwt.publicKeys) }}
{{- fail "auth.jwt.enabled needs auth.jwt.publicKeys or auth.jwt.existingSecret" }}
{{- end }}
{{- if and .Values.command.autoscaling.enabled (gt (int .Values.command.autoscaling.minReplicas) (int .Values.command.autoscaling.maxReplicas)) }}
{{- fail "command.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- end }}

{{/* Environment shared by the serving pods and the migration Job: the database URL as a file. */}}
{{- define "stratopt.databaseEnv" -}}
- name: STRATOPT_DATABASE_URL_FILE
  value: /etc/stratopt/database/url
{{- if .Values.database.connectTimeoutSeconds }}
- name: STRATOPT_DB_CONNECT_TIMEOUT_S
  value: {{ .Values.database.connectTimeoutSeconds | quote }}
{{- end }}
{{- if .Values.database.statementTimeoutSeconds }}
- name: STRATOPT_DB_STATEMENT_TIMEOUT_S
  value: {{ .Values.database.statementTimeoutSeconds | quote }}
{{- end }}
- name: STRATOPT_DB_WAIT_LIMIT_S
  value: {{ .Values.database.waitLimitSeconds | quote }}
{{- end }}

{{- define "stratopt.databaseVolume" -}}
- name: database
  secret:
    secretName: {{ include "stratopt.databaseSecret" . }}
    defaultMode: 0440
    optional: false
    items:
      - key: {{ include "stratopt.databaseSecretKey" . }}
        path: url
{{- end }}

{{/*
A serving Deployment. Call with (dict "root" $ "side" "command"|"query").
*/}}
{{- define "stratopt.deployment" -}}
{{- $root := .root }}
{{- $side := .side }}
{{- $v := index $root.Values $side }}
{{- $bind := $root.Values.bindHost }}
{{- $sideService := ternary "stratopt.v1.OptimizationCommandService" "stratopt.v1.OptimizationQueryService" (eq $side "command") }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "stratopt.fullname" $root }}-{{ $side }}
  labels:
    {{- include "stratopt.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $side }}
spec:
  {{- if not (and (eq $side "command") $root.Values.command.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "stratopt.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ $side }}
  template:
    metadata:
      labels:
        {{- include "stratopt.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $side }}
      annotations:
        checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
        {{- if and $root.Values.metrics.enabled $root.Values.metrics.annotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.metrics.port | quote }}
        prometheus.io/scheme: {{ ternary "https" "http" $root.Values.tls.enabled }}
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $root.Values.serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ add $root.Values.lifecycle.shutdownGraceSeconds $root.Values.lifecycle.shutdownTimeoutSeconds 5 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: stratopt
          image: {{ include "stratopt.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            - serve
            - --side
            - {{ $side }}
            - --address
            - {{ printf "%s:%d" $bind (int $root.Values.ports.grpc) | quote }}
            - --no-migrate
            {{- if eq $side "command" }}
            - --workers
            - {{ $v.workers | quote }}
            {{- end }}
          env:
            - name: STRATOPT_MIGRATE
              value: "false"
            - name: HOME
              value: /tmp
            {{- include "stratopt.databaseEnv" $root | nindent 12 }}
            - name: STRATOPT_HEALTH_ADDRESS
              value: {{ printf "%s:%d" $bind (int $root.Values.ports.health) | quote }}
            - name: STRATOPT_SHUTDOWN_GRACE_S
              value: {{ $root.Values.lifecycle.shutdownGraceSeconds | quote }}
            - name: STRATOPT_SHUTDOWN_TIMEOUT_S
              value: {{ $root.Values.lifecycle.shutdownTimeoutSeconds | quote }}
            - name: STRATOPT_LOG_FORMAT
              value: {{ $root.Values.logging.format | quote }}
            - name: STRATOPT_ACCESS_LOG
              value: {{ $root.Values.logging.accessLog | quote }}
            {{- if eq $side "command" }}
            - name: STRATOPT_WORKERS
              value: {{ $v.workers | quote }}
            {{- if $v.maxQueue }}
            - name: STRATOPT_MAX_QUEUE
              value: {{ $v.maxQueue | quote }}
            {{- end }}
            - name: STRATOPT_HEAVY_WORKERS
              value: {{ $v.heavyWorkers | quote }}
            {{- if $v.heavyMaxQueue }}
            - name: STRATOPT_HEAVY_MAX_QUEUE
              value: {{ $v.heavyMaxQueue | quote }}
            {{- end }}
            - name: STRATOPT_HEAVY_ASSETS
              value: {{ $v.heavyAssets | quote }}
            # JAX's compiled solver sizes on the pod's /tmp volume: a restarted container and the pool's other
            # workers load them instead of compiling again (stratopt_cli/jax_cache.py).
            - name: STRATOPT_JAX_CACHE_DIR
              value: /tmp/jax-cache
            {{- if $v.warmBatchAssets }}
            - name: STRATOPT_WARM_BATCH_ASSETS
              value: {{ $v.warmBatchAssets | quote }}
            {{- end }}
            - name: STRATOPT_RETENTION_EVENTS_DAYS
              value: {{ $root.Values.retention.eventsDays | quote }}
            - name: STRATOPT_RETENTION_REBALANCE_EVENTS_DAYS
              value: {{ $root.Values.retention.rebalanceEventsDays | quote }}
            - name: STRATOPT_RETENTION_MARKET_DATA_DAYS
              value: {{ $root.Values.retention.marketDataDays | quote }}
            - name: STRATOPT_RETENTION_SIGNALS_DAYS
              value: {{ $root.Values.retention.signalsDays | quote }}
            - name: STRATOPT_RETENTION_QUOTES_DAYS
              value: {{ $root.Values.retention.quotesDays | quote }}
            - name: STRATOPT_RETENTION_ROTATION_DECISIONS_DAYS
              value: {{ $root.Values.retention.rotationDecisionsDays | quote }}
            - name: STRATOPT_RETENTION_EXECUTION_EVENTS_DAYS
              value: {{ $root.Values.retention.executionEventsDays | quote }}
            - name: STRATOPT_RETENTION_KILL_SWITCH_EVENTS_DAYS
              value: {{ $root.Values.retention.killSwitchEventsDays | quote }}
            - name: STRATOPT_RETENTION_BACKTESTS_DAYS
              value: {{ $root.Values.retention.backtestsDays | quote }}
            - name: STRATOPT_RETENTION_INTERVAL_S
              value: {{ $root.Values.retention.intervalSeconds | quote }}
            - name: STRATOPT_RECOMPUTE_TICK_S
              value: {{ $root.Values.recompute.tickSeconds | quote }}
            - name: STRATOPT_RECOMPUTE_RETRY_S
              value: {{ $root.Values.recompute.retrySeconds | quote }}
            - name: STRATOPT_RECOMPUTE_MAX_ATTEMPTS
              value: {{ $root.Values.recompute.maxAttempts | quote }}
            {{- else }}
            - name: STRATOPT_QUERY_EVENT_CACHE
              value: {{ $v.eventCacheEntries | quote }}
            {{- end }}
            {{- if $root.Values.metrics.enabled }}
            - name: STRATOPT_METRICS_ADDRESS
              value: {{ printf "%s:%d" $bind (int $root.Values.metrics.port) | quote }}
            {{- end }}
            {{- if $root.Values.tls.enabled }}
            - name: STRATOPT_TLS_CERT_FILE
              value: /etc/stratopt/tls/tls.crt
            - name: STRATOPT_TLS_KEY_FILE
              value: /etc/stratopt/tls/tls.key
            {{- if $root.Values.tls.clientAuth }}
            - name: STRATOPT_TLS_CLIENT_CA_FILE
              value: /etc/stratopt/tls/ca.crt
            {{- end }}
            {{- if include "stratopt.clientRoles" $root }}
            - name: STRATOPT_TLS_CLIENT_ROLES_FILE
              value: /etc/stratopt/client-roles/client-roles.json
            {{- end }}
            {{- end }}
            {{- if $root.Values.auth.jwt.enabled }}
            - name: STRATOPT_JWT_PUBLIC_KEYS_FILE
              value: /etc/stratopt/jwt/public-keys
            {{- with $root.Values.auth.jwt.issuer }}
            - name: STRATOPT_JWT_ISSUER
              value: {{ . | quote }}
            {{- end }}
            {{- with $root.Values.auth.jwt.audience }}
            - name: STRATOPT_JWT_AUDIENCE
              value: {{ . | quote }}
            {{- end }}
            {{- with $root.Values.auth.jwt.rolesClaim }}
            - name: STRATOPT_JWT_ROLES_CLAIM
              value: {{ . | quote }}
            {{- end }}
            {{- end }}
            {{- if not (kindIs "invalid" $root.Values.auth.allowSelfApproval) }}
            - name: STRATOPT_ALLOW_SELF_APPROVAL
              value: {{ $root.Values.auth.allowSelfApproval | quote }}
            {{- end }}
            {{- if $root.Values.insecure }}
            - name: STRATOPT_INSECURE
              value: "true"
            {{- end }}
            {{- if $root.Values.tracing.enabled }}
            - name: STRATOPT_OTEL_ENABLED
              value: "true"
            - name: OTEL_SERVICE_NAME
              value: stratopt-{{ $side }}
            {{- with $root.Values.tracing.otlpEndpoint }}
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $root.Values.ports.grpc }}
              protocol: TCP
            - name: health
              containerPort: {{ $root.Values.ports.health }}
              protocol: TCP
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          startupProbe:
            grpc:
              port: {{ $root.Values.ports.health }}
              service: {{ $root.Values.probes.liveness.service | quote }}
            periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.startup.failureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $root.Values.ports.health }}
              service: {{ $root.Values.probes.liveness.service | quote }}
            initialDelaySeconds: {{ $root.Values.probes.liveness.initialDelaySeconds }}
            periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $root.Values.ports.health }}
              service: {{ default $sideService $root.Values.probes.readiness.service | quote }}
            periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: database
              mountPath: /etc/stratopt/database
              readOnly: true
            {{- if $root.Values.tls.enabled }}
            - name: tls
              mountPath: /etc/stratopt/tls
              readOnly: true
            {{- end }}
            {{- if $root.Values.auth.jwt.enabled }}
            - name: jwt
              mountPath: /etc/stratopt/jwt
              readOnly: true
            {{- end }}
            {{- if include "stratopt.clientRoles" $root }}
            - name: client-roles
              mountPath: /etc/stratopt/client-roles
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- include "stratopt.databaseVolume" $root | nindent 8 }}
        {{- if $root.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ include "stratopt.tlsSecret" $root }}
            defaultMode: 0440
            optional: false
            items:
              - key: tls.crt
                path: tls.crt
              - key: tls.key
                path: tls.key
              {{- if $root.Values.tls.clientAuth }}
              - key: ca.crt
                path: ca.crt
              {{- end }}
        {{- end }}
        {{- if $root.Values.auth.jwt.enabled }}
        - name: jwt
          secret:
            secretName: {{ include "stratopt.jwtSecret" $root }}
            defaultMode: 0440
            optional: false
            items:
              - key: {{ include "stratopt.jwtSecretKey" $root }}
                path: public-keys
        {{- end }}
        {{- if include "stratopt.clientRoles" $root }}
        - name: client-roles
          secret:
            secretName: {{ include "stratopt.clientRolesSecret" $root }}
            defaultMode: 0440
            optional: false
            items:
              - key: client-roles.json
                path: client-roles.json
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
