{{- define "eaas.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eaas.serviceAccountName" -}}
{{- default (include "eaas.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "eaas.labels" -}}
app.kubernetes.io/name: eaas-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "eaas.selectorLabels" -}}
app.kubernetes.io/name: eaas-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The namespaces the operator watches: the list given, else the release namespace. */ -}}
{{- define "eaas.watchedNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- join "," .Values.watch.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- /* Exactly the calls the operator makes in the namespaces it watches. */ -}}
{{- define "eaas.namespacedRules" -}}
# kopf: watch MoEDeployments, patch them (finalizer, progress annotations) and their status.
- apiGroups: [eaas.dev]
  resources: [moedeployments]
  verbs: [list, watch, patch]
- apiGroups: [eaas.dev]
  resources: [moedeployments/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which clusters enforcing
# OwnerReferencesPermissionEnforcement only allow with update on the owner's finalizers.
- apiGroups: [eaas.dev]
  resources: [moedeployments/finalizers]
  verbs: [update]
# kopf posts Events about what the operator did.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Children: server-side apply (create + patch), prune (list + delete), replicas (patch), readiness (list).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [list, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, create, patch, delete]
# A re-shaped layout's old groups go only after the old gateway pods have drained (list pods).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# The gateways' API access: a ServiceAccount, and a Role + RoleBinding that let it watch Endpoints.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, create, patch, delete]
# RBAC lets the operator grant only what it holds itself (no escalate/bind): the gateways' Endpoints rights.
- apiGroups: [""]
  resources: [endpoints]
  verbs: [get, list, watch]
{{- end -}}

{{- /* Prometheus operator: the namespaces the eaas pods run in (the operator's watched ones). */ -}}
{{- define "eaas.monitorNamespaceSelector" -}}
{{- if .Values.watch.allNamespaces -}}
any: true
{{- else -}}
matchNames:
{{- range splitList "," (include "eaas.watchedNamespaces" .) }}
  - {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{- /* The gateways and expert servers of every MoEDeployment (labels the operator puts on its children). */ -}}
{{- define "eaas.monitoredSelector" -}}
matchLabels:
  app.kubernetes.io/name: eaas
  app.kubernetes.io/managed-by: eaas-operator
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [gateway, expert-group]
{{- end -}}

{{- /* Target labels the dashboard filters and groups by: the MoEDeployment, the component, the expert group. */ -}}
{{- define "eaas.monitorRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_instance]
  targetLabel: deployment
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
  targetLabel: component
- sourceLabels: [__meta_kubernetes_pod_label_eaas_dev_group]
  targetLabel: expert_group
{{- end -}}

{{- /* Both monitors at once would scrape every pod twice. */ -}}
{{- define "eaas.oneMonitor" -}}
{{- if and .Values.monitoring.podMonitor.enabled .Values.monitoring.serviceMonitor.enabled -}}
{{- fail "monitoring: enable podMonitor or serviceMonitor, not both (each pod would be scraped twice)" -}}
{{- end -}}
{{- end -}}
