{{/*
Names, labels and shared fragments of the m2m-operator chart.
*/}}

{{/* The chart name, overridable. */}}
{{- define "m2m-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The object name prefix: <release>-<chart>, or the release name when it already
contains the chart name. Truncated so that "<fullname>-token-server-admin" (the
longest suffix used) still fits in 63 characters.
*/}}
{{- define "m2m-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "m2m-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "m2m-operator.labels" -}}
helm.sh/chart: {{ include "m2m-operator.chart" . }}
app.kubernetes.io/name: {{ include "m2m-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: m2m-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "controller"). */}}
{{- define "m2m-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "m2m-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "m2m-operator.componentLabels" -}}
{{ include "m2m-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Names of the component objects. */}}
{{- define "m2m-operator.controller.fullname" -}}
{{- printf "%s-controller" (include "m2m-operator.fullname" .) -}}
{{- end -}}

{{- define "m2m-operator.tokenServer.fullname" -}}
{{- printf "%s-token-server" (include "m2m-operator.fullname" .) -}}
{{- end -}}

{{/* The core v1 ServiceAccount names. */}}
{{- define "m2m-operator.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (include "m2m-operator.controller.fullname" .) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "m2m-operator.tokenServer.serviceAccountName" -}}
{{- if .Values.tokenServer.serviceAccount.create -}}
{{- default (include "m2m-operator.tokenServer.fullname" .) .Values.tokenServer.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.tokenServer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Fixed names of the operator's own objects in the release namespace. The binary
uses these names; they are not configurable, which is why one release per
namespace is supported.
*/}}
{{- define "m2m-operator.keysSecretName" -}}m2m-operator-keys{{- end -}}

{{/*
The token-server Service is named <fullname> (not <fullname>-token-server): it
is the product's public face, and with the default release name the issuer is
http://m2m-operator.<namespace>.svc:8080, the binary's own default.
*/}}
{{- define "m2m-operator.tokenServer.serviceName" -}}
{{- include "m2m-operator.fullname" . -}}
{{- end -}}

{{/* The token-server Service's in-cluster host name. */}}
{{- define "m2m-operator.tokenServer.host" -}}
{{- printf "%s.%s.svc" (include "m2m-operator.tokenServer.serviceName" .) .Release.Namespace -}}
{{- end -}}

{{/* The issuer URL both components use. */}}
{{- define "m2m-operator.issuer" -}}
{{- if .Values.config.issuer -}}
{{- .Values.config.issuer | trimSuffix "/" -}}
{{- else -}}
{{- $scheme := ternary "https" "http" (not (empty .Values.tokenServer.tls.secretName)) -}}
{{- printf "%s://%s:%d" $scheme (include "m2m-operator.tokenServer.host" .) (int .Values.tokenServer.service.port) -}}
{{- end -}}
{{- end -}}

{{/* The container image reference. */}}
{{- define "m2m-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* PodDisruptionBudget API version: policy/v1 where served (1.21+), else v1beta1. */}}
{{- define "m2m-operator.pdb.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/* HorizontalPodAutoscaler API version: autoscaling/v2 where served (1.23+), else v2beta2. */}}
{{- define "m2m-operator.hpa.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{/*
Environment shared by both components. M2M_NAMESPACE comes from the downward
API so the operator finds its keys Secret, revocation list and Lease in the
release namespace; M2M_SERVICE_NAME names the token-server Service.
*/}}
{{- define "m2m-operator.commonEnv" -}}
- name: M2M_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: M2M_SERVICE_NAME
  value: {{ include "m2m-operator.tokenServer.serviceName" . | quote }}
- name: M2M_ISSUER
  value: {{ include "m2m-operator.issuer" . | quote }}
- name: M2M_DEFAULT_ALLOWED_SCOPES
  value: {{ .Values.config.defaultAllowedScopes | quote }}
{{- with .Values.config.defaultRole }}
- name: M2M_DEFAULT_ROLE
  value: {{ . | quote }}
{{- end }}
- name: M2M_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- end -}}

{{/* Default affinity: prefer replicas of one component on different nodes. */}}
{{- define "m2m-operator.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "m2m-operator.selectorLabels" (dict "root" .root "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* A PodDisruptionBudget spec body: call with (dict "root" $ "component" … "pdb" …). */}}
{{- define "m2m-operator.pdbSpec" -}}
{{- $min := .pdb.minAvailable | default "" | toString -}}
{{- if ne $min "" }}
minAvailable: {{ .pdb.minAvailable }}
{{- else }}
maxUnavailable: {{ .pdb.maxUnavailable }}
{{- end }}
selector:
  matchLabels:
    {{- include "m2m-operator.selectorLabels" (dict "root" .root "component" .component) | nindent 4 }}
{{- end -}}
