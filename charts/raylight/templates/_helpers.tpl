{{- define "raylight.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "raylight.selectorLabels" -}}
app.kubernetes.io/name: raylight
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's pods and Services: the component label keeps them apart from the bundled
MLflow's, which share the name and instance labels (logs, metrics and ServiceMonitor see only these). */}}
{{- define "raylight.operatorSelectorLabels" -}}
{{ include "raylight.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "raylight.labels" -}}
{{ include "raylight.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The bundled MLflow server runs unless an external tracking URI is given. */}}
{{- define "raylight.mlflowServer" -}}
{{- if and .Values.mlflow.server.enabled (not .Values.mlflow.trackingUri) -}}true{{- end -}}
{{- end -}}

{{- define "raylight.trackingUri" -}}
{{- if .Values.mlflow.trackingUri -}}{{ .Values.mlflow.trackingUri }}
{{- else if include "raylight.mlflowServer" . -}}
{{- printf "http://%s-mlflow.%s.svc:%d" (include "raylight.fullname" .) .Release.Namespace (int .Values.mlflow.server.port) -}}
{{- end -}}
{{- end -}}

{{/* The Host headers the bundled MLflow answers (MLflow refuses others as DNS rebinding): its
Service by every name a pod or port-forward uses, with or without a port, the private address
ranges MLflow allows by default, and mlflow.server.allowedHosts. */}}
{{- define "raylight.mlflowAllowedHosts" -}}
{{- $name := printf "%s-mlflow" (include "raylight.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list -}}
{{- range list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) "localhost" "127.0.0.1" -}}
{{- $hosts = append (append $hosts .) (printf "%s:*" .) -}}
{{- end -}}
{{- $hosts = concat $hosts (list "10.*" "192.168.*") -}}
{{- range untilStep 16 32 1 -}}
{{- $hosts = append $hosts (printf "172.%d.*" .) -}}
{{- end -}}
{{- concat $hosts .Values.mlflow.server.allowedHosts | join "," -}}
{{- end -}}

{{- define "raylight.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "raylight.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities: {drop: [ALL]}
{{- end -}}

{{/* The rules the operator uses, and no more: see the README's RBAC table. */}}
{{- define "raylight.rules" -}}
- apiGroups: [raylight.dev]
  resources: [trainingjobs, tunesweeps]
  verbs: [get, list, watch]
- apiGroups: [raylight.dev]
  resources: [trainingjobs/status, tunesweeps/status]
  verbs: [get, patch]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, list, watch, create, patch, delete]   # create + patch: server-side apply
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]                 # why a run's pods cannot start, into its status
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]                     # list: the kubelet's word on a pod stuck being created
{{- end -}}
