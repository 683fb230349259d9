{{/* Names, labels and the small decisions several templates share. */}}

{{- define "snnrm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart name. */}}
{{- define "snnrm.fullname" -}}
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

{{/* A component's object name: "<fullname>-<suffix>", kept within 63 characters. */}}
{{- define "snnrm.componentName" -}}
{{- printf "%s-%s" (include "snnrm.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "snnrm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "snnrm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "snnrm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "snnrm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: snnrm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: pass (dict "root" $ "component" "daemon"). */}}
{{- define "snnrm.componentLabels" -}}
{{ include "snnrm.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "snnrm.componentSelector" -}}
{{ include "snnrm.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "snnrm.image" -}}
{{- $img := .Values.image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry -}}{{- $repo = printf "%s/%s" $img.registry $img.repository -}}{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "snnrm.daemon.serviceAccountName" -}}
{{- if .Values.daemon.serviceAccount.create -}}
{{- default (include "snnrm.componentName" (dict "root" . "suffix" "daemon")) .Values.daemon.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.daemon.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "snnrm.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (include "snnrm.componentName" (dict "root" . "suffix" "controller")) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "snnrm.controller.leaseName" -}}
{{- default (include "snnrm.componentName" (dict "root" . "suffix" "controller")) .Values.controller.leaderElection.leaseName -}}
{{- end -}}

{{/* The hooks' Secret and whether the hooks need the Kubernetes API (any scaling action). */}}
{{- define "snnrm.hooks.secretName" -}}
{{- default (include "snnrm.componentName" (dict "root" . "suffix" "hooks")) .Values.hooks.token.existingSecret -}}
{{- end -}}

{{- define "snnrm.hooks.enabled" -}}
{{- if and .Values.daemon.enabled .Values.hooks.enabled -}}
{{- if not .Values.hooks.rules -}}
{{- fail "hooks.enabled needs at least one entry in hooks.rules (docs/autoscaling-hooks.md): the endpoint does not exist without hooks" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{- define "snnrm.hooks.needsKube" -}}
{{- if include "snnrm.hooks.enabled" . -}}
{{- range .Values.hooks.rules -}}
{{- if has .action (list "scale" "keda" "hpa") -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Kind -> (API group, resource path the hooks call). Mirrors snnrm/cluster/hooks.py target_path(). */}}
{{- define "snnrm.hooks.targetRule" -}}
{{- $t := .target -}}
{{- if eq $t.kind "Deployment" -}}apps deployments/scale
{{- else if eq $t.kind "StatefulSet" -}}apps statefulsets/scale
{{- else if eq $t.kind "ScaledObject" -}}keda.sh scaledobjects
{{- else if eq $t.kind "HorizontalPodAutoscaler" -}}autoscaling horizontalpodautoscalers
{{- else -}}{{- fail (printf "hooks.rules[%s].target.kind %q: expected Deployment, StatefulSet, ScaledObject or HorizontalPodAutoscaler" .name $t.kind) -}}
{{- end -}}
{{- end -}}

{{/* Whether the prometheus-operator API is served ("auto" switches) or was asked for explicitly. */}}
{{- define "snnrm.monitoring.operatorServed" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{- define "snnrm.monitoring.monitorKind" -}}
{{- $m := .Values.monitoring.monitor -}}
{{- if and .Values.daemon.enabled (eq $m "auto") -}}
{{- if include "snnrm.monitoring.operatorServed" . -}}ServiceMonitor{{- end -}}
{{- else if and .Values.daemon.enabled (ne $m "None") -}}
{{- $m -}}
{{- end -}}
{{- end -}}

{{- define "snnrm.monitoring.ruleEnabled" -}}
{{- $e := .Values.monitoring.prometheusRule.enabled -}}
{{- if eq (toString $e) "auto" -}}
{{- include "snnrm.monitoring.operatorServed" . -}}
{{- else if $e -}}true
{{- end -}}
{{- end -}}

{{/* Labels for prometheus-operator objects: the kube-prometheus-stack "release" selector label and extras. */}}
{{- define "snnrm.monitoring.labels" -}}
{{- $l := deepCopy .Values.monitoring.labels -}}
{{- with .Values.monitoring.release -}}{{- $_ := set $l "release" . -}}{{- end -}}
{{- if $l -}}{{- toYaml $l -}}{{- end -}}
{{- end -}}

{{/* Target relabelings shared by the ServiceMonitor and the PodMonitor. */}}
{{- define "snnrm.monitoring.relabelings" -}}
- action: replace
  targetLabel: job
  replacement: {{ .Values.monitoring.jobName | quote }}
{{- if .Values.monitoring.nodeLabelFromPod }}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
{{- end }}
{{- with .Values.monitoring.relabelings }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* The daemon's own node label (its hostname) collides with the target's and is renamed exported_node. */ -}}
{{- define "snnrm.monitoring.metricRelabelings" -}}
{{- $r := list -}}
{{- if .Values.monitoring.nodeLabelFromPod -}}
{{- $r = append $r (dict "action" "labeldrop" "regex" "exported_node") -}}
{{- end -}}
{{- $r = concat $r .Values.monitoring.metricRelabelings -}}
{{- if $r -}}{{- toYaml $r -}}{{- end -}}
{{- end -}}

{{/* The path prefix the controller serves the extender verbs under (snnrm/http/extender.py DEFAULT_PREFIX). */}}
{{- define "snnrm.extender.prefix" -}}/extender{{- end -}}

{{- define "snnrm.extender.urlPrefix" -}}
{{- if .Values.controller.schedulerExtender.urlPrefix -}}
{{- .Values.controller.schedulerExtender.urlPrefix -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d%s" (include "snnrm.componentName" (dict "root" . "suffix" "extender")) .Release.Namespace (int .Values.controller.port) (include "snnrm.extender.prefix" .) -}}
{{- end -}}
{{- end -}}

{{/* The KubeSchedulerConfiguration `extenders:` entry (rendered into a ConfigMap and NOTES.txt). */}}
{{- define "snnrm.extender.config" -}}
{{- $e := .Values.controller.schedulerExtender -}}
- urlPrefix: {{ include "snnrm.extender.urlPrefix" . | quote }}
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: {{ $e.weight }}
  httpTimeout: {{ $e.httpTimeout | quote }}
  enableHTTPS: false
  nodeCacheCapable: {{ $e.nodeCacheCapable }}
  ignorable: {{ $e.ignorable }}
  managedResources:
  {{- range $e.managedResources }}
    - name: {{ . | quote }}
      ignoredByScheduler: false
  {{- end }}
{{- end -}}

{{/* The daemon's placement agent (config placement:): daemon.placement.enabled, or null = controller.enabled. */}}
{{- define "snnrm.placement.enabled" -}}
{{- if .Values.daemon.enabled -}}
{{- $on := .Values.daemon.placement.enabled -}}
{{- if kindIs "invalid" $on -}}{{- $on = .Values.controller.enabled -}}{{- end -}}
{{- if $on -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* The own-node admission policy for the placement agent (daemon.placement.ownNodeOnly): "auto" renders it when
the cluster is 1.30+ (ValidatingAdmissionPolicy v1 is GA and pod-bound tokens name their node); true insists (and fails below 1.30); false never. */}}
{{- define "snnrm.placement.ownNodeOnly" -}}
{{- if include "snnrm.placement.enabled" . -}}
{{- $v := toString .Values.daemon.placement.ownNodeOnly -}}
{{- $new := semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version -}}
{{- if eq $v "true" -}}
{{- if not $new -}}
{{- fail (printf "daemon.placement.ownNodeOnly=true needs Kubernetes 1.30+ (ValidatingAdmissionPolicy v1 and the node claim in pod-bound tokens); this cluster is %s: set it to false or auto" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
true
{{- else if and (eq $v "auto") $new -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The daemon's DRA kubelet plugin (config dra: on|only). */}}
{{- define "snnrm.dra.enabled" -}}
{{- if and .Values.daemon.enabled (ne (toString .Values.dra.mode) "off") -}}true{{- end -}}
{{- end -}}

{{/* Whether the daemon talks to the apiserver at all (then, and only then, its pod gets an API token). */}}
{{- define "snnrm.daemon.needsKube" -}}
{{- if or (include "snnrm.hooks.needsKube" .) (include "snnrm.placement.enabled" .) (include "snnrm.dra.enabled" .) -}}true{{- end -}}
{{- end -}}

{{- define "snnrm.simFaultToken.enabled" -}}
{{- if and .Values.daemon.enabled (eq (toString .Values.daemon.config.backend) "sim") (eq (toString .Values.daemon.config.simFaultInjection) "token") -}}true{{- end -}}
{{- end -}}

{{- define "snnrm.simFaultToken.secretName" -}}
{{- default (include "snnrm.componentName" (dict "root" . "suffix" "sim-faults")) .Values.daemon.simFaultToken.existingSecret -}}
{{- end -}}

{{/* A Kubernetes quantity ("128Mi", "100m", "1.5", "2e3") as a plain number, so templates can compare them.
The schema has already checked the grammar; anything else fails here with the value named. */}}
{{- define "snnrm.quantity" -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $mult := dict "" 1.0 "n" 0.000000001 "u" 0.000001 "m" 0.001 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "P" 1000000000000000.0 "E" 1000000000000000000.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- if not $num -}}
{{- fail (printf "%q is not a Kubernetes quantity" $q) -}}
{{- else if hasKey $mult $suffix -}}
{{- mulf (float64 $num) (get $mult $suffix) -}}
{{- else if regexMatch "^[eE][+-]?[0-9]+$" $suffix -}}
{{- $exp := int (trimPrefix "+" (substr 1 -1 $suffix)) -}}
{{- $v := float64 $num -}}
{{- range until (int (max $exp (sub 0 $exp))) -}}{{- $v = ternary (mulf $v 10.0) (divf $v 10.0) (gt $exp 0) -}}{{- end -}}
{{- $v -}}
{{- else -}}
{{- fail (printf "%q is not a Kubernetes quantity (suffix %q)" $q $suffix) -}}
{{- end -}}
{{- end -}}

{{/* Requests above limits make the apiserver reject the pod (or, for a DaemonSet, every pod, long after the
install "succeeded"): refuse them at render time. Pass (dict "resources" ... "where" "daemon.resources"). */}}
{{- define "snnrm.checkResources" -}}
{{- $req := .resources.requests | default dict -}}
{{- $lim := .resources.limits | default dict -}}
{{- range $name := keys $req | sortAlpha -}}
{{- if hasKey $lim $name -}}
{{- $r := get $req $name -}}
{{- $l := get $lim $name -}}
{{- /* float64 arithmetic: equal quantities spelt differently ("100m", "0.1") may differ in the last bit */ -}}
{{- if gt (float64 (include "snnrm.quantity" $r)) (mulf (float64 (include "snnrm.quantity" $l)) 1.000000001) -}}
{{- fail (printf "%s.requests.%s (%v) is above %s.limits.%s (%v): a request may not exceed its limit (Kubernetes rejects the pod)" $.where $name $r $.where $name $l) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A chart-made token that stays put: the user's value, else the value already in the installed Secret (lookup:
helm install/upgrade and `helm template --dry-run=server` see the cluster), else a new random one. Plain
`helm template` and client-side dry runs cannot look up, so they print a fresh token each time: pin it with the
value or an existingSecret when the output is applied by something else (GitOps).
Pass (dict "root" $ "name" <Secret name> "key" <data key> "value" <user value>). */}}
{{- define "snnrm.secretToken" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- $old := "" -}}
{{- if and $existing $existing.data -}}{{- $old = get $existing.data .key | b64dec -}}{{- end -}}
{{- .value | default $old | default (randAlphaNum 40) -}}
{{- end -}}
