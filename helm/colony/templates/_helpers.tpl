{{/* Chart name, shortened to the 63 characters Kubernetes names allow. */}}
{{- define "colony.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix: "<release>-<chart>", or the release alone when it
already contains the chart name; at most 63 characters.
*/}}
{{- define "colony.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's resource name: "<fullname>-<component>", at most 63 characters. */}}
{{- define "colony.componentName" -}}
{{- printf "%s-%s" (include "colony.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "colony.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "colony.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: colony
{{- end }}

{{/*
Selector labels of one component. The deploy tool finds workloads by
app.kubernetes.io/instance + app.kubernetes.io/component, never by name.
*/}}
{{- define "colony.selectorLabels" -}}
app.kubernetes.io/name: {{ include "colony.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's resources. */}}
{{- define "colony.componentLabels" -}}
{{ include "colony.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* An image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "colony.image" -}}
{{- $repository := required "image.repository is required" .image.repository }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .appVersion) }}
{{- end }}
{{- end }}

{{/* The Secret holding the database URL. */}}
{{- define "colony.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "colony.componentName" (dict "root" . "component" "database") }}
{{- end }}
{{- end }}

{{/* DATABASE_URL from the secret, for the backend and its init container. */}}
{{- define "colony.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "colony.databaseSecretName" . }}
      key: {{ .Values.database.secretKey }}
{{- end }}

{{/*
A component's pod-spec lines from its values: the ServiceAccount, the pod's
securityContext, nodeSelector, tolerations, affinity. Called with
(dict "root" $ "values" .Values.<component>).
*/}}
{{- define "colony.podSpec" -}}
{{- with include "colony.serviceAccountName" .root }}
serviceAccountName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pods' ServiceAccount: the one named, else the created one, else none (the namespace's default). */}}
{{- define "colony.serviceAccountName" -}}
{{- if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.create }}
{{- include "colony.fullname" . }}
{{- end }}
{{- end }}
