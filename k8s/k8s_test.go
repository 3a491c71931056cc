package k8s_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/internal/testenv"
)

// overlays are the kustomizations users apply.
var overlays = []string{"overlays/dev", "overlays/production"}

// bin is the deeptrace binary built from this tree, in TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deeptrace-k8s-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "deeptrace")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/deeptrace/deeptrace/cmd/deeptrace").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build deeptrace: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// commandFlags is one line of `deeptrace flags`.
type commandFlags struct {
	Path    string   `json:"path"`
	Section string   `json:"section"`
	Flags   []string `json:"flags"`
}

// binary is what the built deeptrace knows: its commands and their flags.
type binary struct {
	path      string
	byPath    map[string]map[string]bool
	bySection map[string]string
}

func loadBinary(t *testing.T) *binary {
	t.Helper()
	out, err := exec.Command(bin, "flags").Output()
	if err != nil {
		t.Fatalf("deeptrace flags: %v", err)
	}
	var cmds []commandFlags
	if err := json.Unmarshal(out, &cmds); err != nil {
		t.Fatalf("deeptrace flags: %v\n%s", err, out)
	}
	b := &binary{path: bin, byPath: map[string]map[string]bool{}, bySection: map[string]string{}}
	for _, c := range cmds {
		set := map[string]bool{}
		for _, f := range c.Flags {
			set[f] = true
		}
		b.byPath[c.Path] = set
		b.bySection[c.Section] = c.Path
	}
	return b
}

// scheme knows every API group the manifests may use; anything else is an
// error, so a typo in a kind or an apiVersion cannot pass.
func decoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme,
		autoscalingv2.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
}

// render builds an overlay with kustomize in memory. The production
// overlay's secret files are git-ignored; their .example copies stand in.
func render(t *testing.T, overlay string) [][]byte {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := mem.WriteFile("/k8s/"+filepath.ToSlash(p), b); err != nil {
			return err
		}
		if real, ok := strings.CutSuffix(p, ".example"); ok {
			if _, err := os.Stat(real); err != nil {
				return mem.WriteFile("/k8s/"+filepath.ToSlash(real), b)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(mem, "/k8s/"+overlay)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", overlay, err)
	}
	var docs [][]byte
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", overlay, r.CurId(), err)
		}
		docs = append(docs, b)
	}
	return docs
}

// workload is anything that runs pods, reduced to what the checks need.
type workload struct {
	Kind, Name string
	Labels     map[string]string
	Selector   *metav1.LabelSelector
	Replicas   int32
	// ReplicasSet says the manifest sets the count itself.
	ReplicasSet bool
	Pod         corev1.PodSpec
	// LongRunning is false for jobs.
	LongRunning bool
}

func (w *workload) String() string { return w.Kind + "/" + w.Name }

// manifests are one overlay's decoded objects.
type manifests struct {
	overlay    string
	workloads  []*workload
	services   []*corev1.Service
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	accounts   map[string]bool
	hpas       []*autoscalingv2.HorizontalPodAutoscaler
	pdbs       []*policyv1.PodDisruptionBudget
	policies   []*networkingv1.NetworkPolicy
	namespaces []*corev1.Namespace
	statefuls  []*appsv1.StatefulSet
}

func load(t *testing.T, overlay string) *manifests {
	t.Helper()
	dec := decoder(t)
	m := &manifests{overlay: overlay, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, accounts: map[string]bool{}}
	one := int32(1)
	for _, doc := range render(t, overlay) {
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: strict decode: %v\n%s", overlay, err, doc)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.workloads = append(m.workloads, &workload{"Deployment", o.Name, o.Spec.Template.Labels, o.Spec.Selector, *cmp(o.Spec.Replicas, &one), o.Spec.Replicas != nil, o.Spec.Template.Spec, true})
		case *appsv1.StatefulSet:
			m.statefuls = append(m.statefuls, o)
			m.workloads = append(m.workloads, &workload{"StatefulSet", o.Name, o.Spec.Template.Labels, o.Spec.Selector, *cmp(o.Spec.Replicas, &one), o.Spec.Replicas != nil, o.Spec.Template.Spec, true})
		case *appsv1.DaemonSet:
			m.workloads = append(m.workloads, &workload{"DaemonSet", o.Name, o.Spec.Template.Labels, o.Spec.Selector, 1, false, o.Spec.Template.Spec, true})
		case *batchv1.CronJob:
			m.workloads = append(m.workloads, &workload{"CronJob", o.Name, o.Spec.JobTemplate.Spec.Template.Labels, nil, 1, false, o.Spec.JobTemplate.Spec.Template.Spec, false})
		case *batchv1.Job:
			m.workloads = append(m.workloads, &workload{"Job", o.Name, o.Spec.Template.Labels, nil, 1, false, o.Spec.Template.Spec, false})
		case *corev1.Service:
			m.services = append(m.services, o)
		case *corev1.ConfigMap:
			m.configMaps[o.Name] = o
		case *corev1.Secret:
			m.secrets[o.Name] = o
		case *corev1.ServiceAccount:
			m.accounts[o.Name] = true
		case *corev1.Namespace:
			m.namespaces = append(m.namespaces, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			m.hpas = append(m.hpas, o)
		case *policyv1.PodDisruptionBudget:
			m.pdbs = append(m.pdbs, o)
		case *networkingv1.NetworkPolicy:
			m.policies = append(m.policies, o)
		default:
			t.Fatalf("%s: %s has no check here; add one", overlay, gvk)
		}
	}
	return m
}

func cmp[T any](p, def *T) *T {
	if p != nil {
		return p
	}
	return def
}

func (m *manifests) workload(kind, name string) *workload {
	for _, w := range m.workloads {
		if w.Kind == kind && w.Name == name {
			return w
		}
	}
	return nil
}

// matching lists the workloads whose pods a selector picks.
func (m *manifests) matching(sel labels.Selector) []*workload {
	var out []*workload
	for _, w := range m.workloads {
		if sel.Matches(labels.Set(w.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func selector(t *testing.T, what string, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("%s: selector: %v", what, err)
	}
	return sel
}

func hasPort(c corev1.Container, port intstr.IntOrString) bool {
	for _, p := range c.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return true
		}
	}
	return false
}

func podHasPort(spec corev1.PodSpec, port intstr.IntOrString) bool {
	return slices.ContainsFunc(spec.Containers, func(c corev1.Container) bool { return hasPort(c, port) })
}

func containerPort(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

// isDeeptrace tells DeepTrace's own containers from Redis and the engine.
func isDeeptrace(c corev1.Container) bool {
	name := strings.SplitN(path.Base(c.Image), ":", 2)[0]
	return name == "deeptrace"
}

// commandOf is the subcommand a container runs: its leading non-flag
// arguments ("store init").
func commandOf(c corev1.Container) string {
	var parts []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, "-") {
			break
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// flagOfEnv is the flag an environment variable sets (DEEPTRACE_ES_URL →
// es-url), as cmd/deeptrace's bindEnv reads it.
func flagOfEnv(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "DEEPTRACE_")
	if !ok {
		return "", false
	}
	return strings.ToLower(strings.ReplaceAll(rest, "_", "-")), true
}

func allContainers(spec corev1.PodSpec) []corev1.Container {
	return slices.Concat(spec.InitContainers, spec.Containers)
}

// configFile is the configuration a container reads: the file named by
// DEEPTRACE_CONFIG, found through its volume mount in a ConfigMap of the
// rendered output.
func (m *manifests) configFile(t *testing.T, w *workload, c corev1.Container) (map[string]any, bool) {
	t.Helper()
	var p string
	for _, e := range c.Env {
		if e.Name == "DEEPTRACE_CONFIG" {
			p = e.Value
		}
	}
	if p == "" {
		return nil, false
	}
	for _, vm := range c.VolumeMounts {
		key := ""
		switch {
		case vm.SubPath != "" && vm.MountPath == p:
			key = vm.SubPath
		case vm.SubPath == "" && path.Dir(p) == path.Clean(vm.MountPath):
			key = path.Base(p)
		default:
			continue
		}
		for _, v := range w.Pod.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil {
				continue
			}
			cm := m.configMaps[v.ConfigMap.Name]
			if cm == nil {
				t.Fatalf("%s %s: DEEPTRACE_CONFIG %s: ConfigMap %s not in the output", w, c.Name, p, v.ConfigMap.Name)
			}
			text, ok := cm.Data[key]
			if !ok {
				t.Fatalf("%s %s: DEEPTRACE_CONFIG %s: ConfigMap %s has no key %q", w, c.Name, p, cm.Name, key)
			}
			var doc map[string]any
			if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
				t.Fatalf("%s: ConfigMap %s key %s: %v", m.overlay, cm.Name, key, err)
			}
			return doc, true
		}
	}
	t.Fatalf("%s %s: DEEPTRACE_CONFIG %s is not in a ConfigMap volume it mounts", w, c.Name, p)
	return nil, false
}

// setting is the value a command ends up with for a flag from the file: its
// section first, then the top level.
func setting(doc map[string]any, section, flag string) (any, bool) {
	if sec, ok := doc[section].(map[string]any); ok {
		if v, ok := sec[flag]; ok {
			return v, true
		}
	}
	v, ok := doc[flag]
	if _, isSection := v.(map[string]any); isSection {
		return nil, false
	}
	return v, ok
}

// TestManifests renders each overlay, decodes every object strictly with
// the Kubernetes API types, and checks the references between them and
// against the deeptrace binary.
func TestManifests(t *testing.T) {
	bin := loadBinary(t)
	for _, overlay := range overlays {
		t.Run(strings.TrimPrefix(overlay, "overlays/"), func(t *testing.T) {
			m := load(t, overlay)
			checkWorkloads(t, m)
			checkServices(t, m)
			checkAutoscalersAndBudgets(t, m)
			checkNetworkPolicies(t, m)
			checkDeeptraceContainers(t, m, bin)
			checkAgent(t, m)
			if overlay == "overlays/production" {
				checkProduction(t, m)
			}
		})
	}
}

func checkWorkloads(t *testing.T, m *manifests) {
	if len(m.namespaces) != 1 {
		t.Errorf("want one Namespace, have %d", len(m.namespaces))
	}
	for _, w := range m.workloads {
		if w.Selector != nil && !selector(t, w.String(), w.Selector).Matches(labels.Set(w.Labels)) {
			t.Errorf("%s: selector %v does not select its own pods %v", w, w.Selector.MatchLabels, w.Labels)
		}
		if sa := w.Pod.ServiceAccountName; sa != "" && !m.accounts[sa] {
			t.Errorf("%s: service account %s not in the output", w, sa)
		}
		// Every volume's ConfigMap or Secret exists unless it is optional.
		for _, v := range w.Pod.Volumes {
			switch {
			case v.ConfigMap != nil:
				if m.configMaps[v.ConfigMap.Name] == nil && !ptrTrue(v.ConfigMap.Optional) {
					t.Errorf("%s: volume %s: ConfigMap %s not in the output", w, v.Name, v.ConfigMap.Name)
				}
			case v.Secret != nil:
				if m.secrets[v.Secret.SecretName] == nil && !ptrTrue(v.Secret.Optional) {
					t.Errorf("%s: volume %s: Secret %s not in the output", w, v.Name, v.Secret.SecretName)
				}
			}
		}
		for _, c := range allContainers(w.Pod) {
			for _, vm := range c.VolumeMounts {
				if !slices.ContainsFunc(w.Pod.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name }) &&
					!statefulClaim(m, w, vm.Name) {
					t.Errorf("%s %s: mounts %s, which is no volume of the pod", w, c.Name, vm.Name)
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil {
					s := m.secrets[r.Name]
					if s == nil && !ptrTrue(r.Optional) {
						t.Errorf("%s %s: env %s: Secret %s not in the output", w, c.Name, e.Name, r.Name)
					} else if s != nil && !hasKey(s, r.Key) {
						t.Errorf("%s %s: env %s: Secret %s has no key %s", w, c.Name, e.Name, r.Name, r.Key)
					}
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
					cm := m.configMaps[r.Name]
					if cm == nil || cm.Data[r.Key] == "" {
						t.Errorf("%s %s: env %s: ConfigMap %s key %s not in the output", w, c.Name, e.Name, r.Name, r.Key)
					}
				}
			}
			// Every container says what it needs and what it may take.
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if _, ok := c.Resources.Requests[res]; !ok {
					t.Errorf("%s %s: no %s request", w, c.Name, res)
				}
				if _, ok := c.Resources.Limits[res]; !ok {
					t.Errorf("%s %s: no %s limit", w, c.Name, res)
				}
			}
			for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				if p != nil && p.HTTPGet != nil && !hasPort(c, p.HTTPGet.Port) {
					t.Errorf("%s %s: probe %s on port %s, which the container does not declare", w, c.Name, p.HTTPGet.Path, p.HTTPGet.Port.String())
				}
				if p != nil && p.TCPSocket != nil && !hasPort(c, p.TCPSocket.Port) {
					t.Errorf("%s %s: TCP probe on port %s, which the container does not declare", w, c.Name, p.TCPSocket.Port.String())
				}
			}
		}
		for _, c := range w.Pod.Containers {
			if w.LongRunning && (c.LivenessProbe == nil || c.ReadinessProbe == nil) {
				t.Errorf("%s %s: long-running container without liveness and readiness probes", w, c.Name)
			}
		}
		// Graceful shutdown needs time beyond the ops endpoint's own.
		if g := w.Pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= ops.ShutdownTimeout {
			t.Errorf("%s: terminationGracePeriodSeconds %v, want it set above %s", w, g, ops.ShutdownTimeout)
		}
	}
	for _, s := range m.statefuls {
		if !slices.ContainsFunc(m.services, func(svc *corev1.Service) bool { return svc.Name == s.Spec.ServiceName }) {
			t.Errorf("StatefulSet/%s: serviceName %s not in the output", s.Name, s.Spec.ServiceName)
		}
	}
}

func statefulClaim(m *manifests, w *workload, name string) bool {
	if w.Kind != "StatefulSet" {
		return false
	}
	for _, s := range m.statefuls {
		if s.Name == w.Name {
			return slices.ContainsFunc(s.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == name })
		}
	}
	return false
}

func ptrTrue(b *bool) bool { return b != nil && *b }

func hasKey(s *corev1.Secret, k string) bool {
	_, a := s.Data[k]
	_, b := s.StringData[k]
	return a || b
}

func checkServices(t *testing.T, m *manifests) {
	for _, s := range m.services {
		if len(s.Spec.Selector) == 0 {
			t.Errorf("Service/%s: no selector", s.Name)
			continue
		}
		pods := m.matching(labels.SelectorFromSet(s.Spec.Selector))
		if len(pods) == 0 {
			t.Errorf("Service/%s: selector %v matches no pods", s.Name, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			for _, w := range pods {
				if !podHasPort(w.Pod, p.TargetPort) {
					t.Errorf("Service/%s port %s: target %s is no container port of %s", s.Name, p.Name, p.TargetPort.String(), w)
				}
			}
		}
	}
}

func checkAutoscalersAndBudgets(t *testing.T, m *manifests) {
	for _, h := range m.hpas {
		ref := h.Spec.ScaleTargetRef
		w := m.workload(ref.Kind, ref.Name)
		if w == nil {
			t.Errorf("HorizontalPodAutoscaler/%s: target %s/%s not in the output", h.Name, ref.Kind, ref.Name)
			continue
		}
		if w.ReplicasSet {
			t.Errorf("HorizontalPodAutoscaler/%s: %s sets replicas, which every apply would reset under the autoscaler", h.Name, w)
		}
		if h.Spec.MinReplicas != nil && *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("HorizontalPodAutoscaler/%s: minReplicas %d above maxReplicas %d", h.Name, *h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		for _, mt := range h.Spec.Metrics {
			if mt.Resource == nil {
				continue
			}
			// Utilization is relative to the request: without one the
			// autoscaler has nothing to scale on.
			for _, c := range w.Pod.Containers {
				if _, ok := c.Resources.Requests[mt.Resource.Name]; !ok {
					t.Errorf("HorizontalPodAutoscaler/%s scales on %s, which %s %s does not request", h.Name, mt.Resource.Name, w, c.Name)
				}
			}
		}
	}
	for _, b := range m.pdbs {
		pods := m.matching(selector(t, "PodDisruptionBudget/"+b.Name, b.Spec.Selector))
		if len(pods) == 0 {
			t.Errorf("PodDisruptionBudget/%s: selector matches no pods", b.Name)
		}
		if b.Spec.MaxUnavailable != nil && b.Spec.MaxUnavailable.Type == intstr.Int && b.Spec.MaxUnavailable.IntVal < 1 {
			t.Errorf("PodDisruptionBudget/%s: maxUnavailable %d blocks every drain", b.Name, b.Spec.MaxUnavailable.IntVal)
		}
		if b.Spec.MinAvailable != nil {
			for _, w := range pods {
				if b.Spec.MinAvailable.Type == intstr.Int && w.Replicas <= b.Spec.MinAvailable.IntVal {
					t.Errorf("PodDisruptionBudget/%s: minAvailable %d with %d replicas of %s blocks every drain", b.Name, b.Spec.MinAvailable.IntVal, w.Replicas, w)
				}
			}
		}
	}
}

func checkNetworkPolicies(t *testing.T, m *manifests) {
	defaultDeny := false
	for _, p := range m.policies {
		name := "NetworkPolicy/" + p.Name
		sel := selector(t, name, &p.Spec.PodSelector)
		selected := m.matching(sel)
		if sel.Empty() {
			if len(p.Spec.Ingress) == 0 && len(p.Spec.Egress) == 0 && len(p.Spec.PolicyTypes) == 2 {
				defaultDeny = true
			}
		} else if len(selected) == 0 {
			t.Errorf("%s: podSelector %v matches no pods", name, p.Spec.PodSelector.MatchLabels)
		}
		for _, r := range p.Spec.Ingress {
			checkPeers(t, m, name+" ingress", r.From)
			for _, port := range r.Ports {
				if port.Port != nil && port.Port.Type == intstr.String &&
					!slices.ContainsFunc(selected, func(w *workload) bool { return podHasPort(w.Pod, *port.Port) }) {
					t.Errorf("%s: ingress port %s is no container port of the selected pods", name, port.Port.StrVal)
				}
			}
		}
		for _, r := range p.Spec.Egress {
			checkIPBlocks(t, name, r.To)
			peers := checkPeers(t, m, name+" egress", r.To)
			for _, port := range r.Ports {
				if port.Port != nil && port.Port.Type == intstr.String &&
					!slices.ContainsFunc(peers, func(w *workload) bool { return podHasPort(w.Pod, *port.Port) }) {
					t.Errorf("%s: egress port %s is no container port of the peers", name, port.Port.StrVal)
				}
			}
		}
	}
	if !defaultDeny {
		t.Errorf("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)")
	}
	// A pod that holds a client's credentials carries the label the
	// policies let through.
	for _, w := range m.workloads {
		for _, c := range allContainers(w.Pod) {
			for _, e := range c.Env {
				for env, label := range map[string]string{"DEEPTRACE_ES_PASSWORD": "deeptrace.io/es-client", "DEEPTRACE_REDIS_PASSWORD": "deeptrace.io/redis-client"} {
					if e.Name == env && isDeeptrace(c) && w.Labels[label] != "true" {
						t.Errorf("%s %s: has %s but not the label %s=true its network policy needs", w, c.Name, env, label)
					}
				}
			}
		}
	}
}

// metadataService is the cloud metadata service's address: pods whose
// egress reaches it could read the node's cloud credentials.
var metadataService = net.ParseIP("169.254.169.254")

// checkIPBlocks refuses an egress ipBlock that reaches the metadata
// service without excepting it.
func checkIPBlocks(t *testing.T, name string, peers []networkingv1.NetworkPolicyPeer) {
	for _, peer := range peers {
		if peer.IPBlock == nil {
			continue
		}
		_, block, err := net.ParseCIDR(peer.IPBlock.CIDR)
		if err != nil {
			t.Errorf("%s: ipBlock %q: %v", name, peer.IPBlock.CIDR, err)
			continue
		}
		if !block.Contains(metadataService) {
			continue
		}
		excepted := slices.ContainsFunc(peer.IPBlock.Except, func(e string) bool {
			_, n, err := net.ParseCIDR(e)
			return err == nil && n.Contains(metadataService)
		})
		if !excepted {
			t.Errorf("%s: egress ipBlock %s reaches the cloud metadata service %s; except 169.254.0.0/16", name, peer.IPBlock.CIDR, metadataService)
		}
	}
}

// checkPeers checks the pod selectors of rule peers in this namespace and
// returns the pods they pick.
func checkPeers(t *testing.T, m *manifests, what string, peers []networkingv1.NetworkPolicyPeer) []*workload {
	var out []*workload
	for _, peer := range peers {
		if peer.PodSelector == nil || peer.NamespaceSelector != nil {
			continue
		}
		pods := m.matching(selector(t, what, peer.PodSelector))
		if len(pods) == 0 && m.overlay != "overlays/production" {
			t.Errorf("%s: peer %v matches no pods", what, peer.PodSelector.MatchLabels)
		}
		out = append(out, pods...)
	}
	return out
}

// ahead lists the settings the manifests give a command before the binary
// has them, with the reason. They are logged instead of failing; when one
// lands the test says so, and the entry should go.
var ahead = map[string]map[string]string{
	"agent": {"es-password": "the agent's engine writer is not in yet; it writes spans with --spans-out"},
}

// listenFlag finds the flag that opens port for a command: the flag whose
// effective value (environment, then the file's section, then its top
// level) is host:port.
func listenFlag(file map[string]any, section string, flags map[string]bool, env []corev1.EnvVar, port int32) (flag, value string) {
	names := make([]string, 0, len(flags))
	for f := range flags {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		v, ok := setting(file, section, f)
		for _, e := range env {
			if n, isFlag := flagOfEnv(e.Name); isFlag && n == f && e.ValueFrom == nil {
				v, ok = e.Value, true
			}
		}
		if !ok {
			continue
		}
		if _, p, err := net.SplitHostPort(fmt.Sprint(v)); err == nil && p == strconv.Itoa(int(port)) {
			return f, fmt.Sprint(v)
		}
	}
	return "", ""
}

// probe is an HTTP probe of a DeepTrace container: the command, the flag
// that opens the probed port, and the path.
type probe struct {
	Command, Flag, Path string
}

// probesOf lists a container's HTTP probes.
func probesOf(c corev1.Container) []*corev1.Probe {
	var out []*corev1.Probe
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if p != nil && p.HTTPGet != nil {
			out = append(out, p)
		}
	}
	return out
}

// checkDeeptraceContainers checks every DeepTrace container against the
// binary: its command exists, its environment and configuration keys are
// flags of that command, and its probes are on a port that a flag of the
// command opens on a reachable address. It returns the probes, for
// TestProbePathsServed.
func checkDeeptraceContainers(t *testing.T, m *manifests, bin *binary) []probe {
	var images []string
	var probes []probe
	commands := map[string]bool{}
	var doc map[string]any
	for _, w := range m.workloads {
		for _, c := range allContainers(w.Pod) {
			if !isDeeptrace(c) {
				continue
			}
			images = append(images, c.Image)
			cmd := commandOf(c)
			commands[cmd] = true
			name := fmt.Sprintf("%s/%s/%s", w.Kind, w.Name, c.Name)
			t.Run(name, func(t *testing.T) {
				file, ok := m.configFile(t, w, c)
				if !ok {
					t.Fatalf("no DEEPTRACE_CONFIG")
				}
				doc = file
				if p := c.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != ops.PathHealthz {
					t.Errorf("liveness on %s: want %s (a process alive but not ready must not be restarted)", p.HTTPGet.Path, ops.PathHealthz)
				}
				if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != ops.PathReadyz {
					t.Errorf("readiness on %s: want %s", p.HTTPGet.Path, ops.PathReadyz)
				}
				flags, ok := bin.byPath[cmd]
				if !ok {
					t.Skipf("command %q is not in the deeptrace binary yet; its flags, environment and probe ports are unchecked", cmd)
				}
				for _, e := range c.Env {
					f, ok := flagOfEnv(e.Name)
					why, early := ahead[cmd][f]
					switch {
					case ok && early && flags[f]:
						t.Logf("deeptrace %s now has --%s: remove it from ahead in k8s/k8s_test.go", cmd, f)
					case ok && early:
						t.Logf("env %s: deeptrace %s has no --%s yet (%s)", e.Name, cmd, f, why)
					case ok && !flags[f]:
						t.Errorf("env %s: deeptrace %s has no flag --%s", e.Name, cmd, f)
					}
				}
				section := cmd[strings.LastIndex(cmd, " ")+1:]
				if containerPort(c, "ops") != 0 && !flags[ops.FlagListen] {
					t.Errorf("container port ops, but deeptrace %s has no --%s", cmd, ops.FlagListen)
				}
				for _, p := range probesOf(c) {
					port := p.HTTPGet.Port.IntVal
					if p.HTTPGet.Port.Type == intstr.String {
						port = containerPort(c, p.HTTPGet.Port.StrVal)
					}
					flag, value := listenFlag(file, section, flags, c.Env, port)
					if flag == "" {
						t.Errorf("probe %s on port %s (%d): no flag of deeptrace %s listens there", p.HTTPGet.Path, p.HTTPGet.Port.String(), port, cmd)
						continue
					}
					if host, _, _ := net.SplitHostPort(value); host == "127.0.0.1" || host == "localhost" || host == "::1" {
						t.Errorf("--%s %s: the kubelet cannot reach loopback", flag, value)
					}
					if flag == ops.FlagListen && !slices.Contains([]string{ops.PathHealthz, ops.PathReadyz}, p.HTTPGet.Path) {
						t.Errorf("probe %s on the ops endpoint, which serves %s and %s", p.HTTPGet.Path, ops.PathHealthz, ops.PathReadyz)
					}
					probes = append(probes, probe{cmd, flag, p.HTTPGet.Path})
				}
			})
		}
	}
	slices.Sort(images)
	if images = slices.Compact(images); len(images) != 1 {
		t.Errorf("DeepTrace containers run %d images %v, want one", len(images), images)
	}
	if m.overlay == "overlays/dev" && len(images) == 1 && images[0] != "deeptrace:dev" {
		t.Errorf("dev image %s, want deeptrace:dev", images[0])
	}
	t.Run("config-file", func(t *testing.T) { checkConfigKeys(t, doc, bin, commands) })
	return probes
}

// checkConfigKeys checks the configuration file's keys against the binary:
// a section's keys are flags of the command named like the section, a
// top-level key is a flag of at least one command.
func checkConfigKeys(t *testing.T, doc map[string]any, bin *binary, commands map[string]bool) {
	if doc == nil {
		t.Fatal("no configuration file found")
	}
	var missing []string
	for cmd := range commands {
		if _, ok := bin.byPath[cmd]; !ok {
			missing = append(missing, cmd)
		}
	}
	sort.Strings(missing)
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if sec, ok := doc[k].(map[string]any); ok {
			path, exists := bin.bySection[k]
			if !exists {
				t.Logf("section %s: no command %q in the binary yet; its keys are unchecked", k, k)
				continue
			}
			for key := range sec {
				if !bin.byPath[path][key] {
					t.Errorf("%s.%s: deeptrace %s has no flag --%s (it would refuse to start)", k, key, path, key)
				}
			}
			continue
		}
		used := false
		for _, flags := range bin.byPath {
			used = used || flags[k]
		}
		switch {
		case used:
		case len(missing) > 0:
			t.Logf("%s: a flag of no command in the binary; perhaps of %v, which are not in it yet", k, missing)
		default:
			t.Errorf("%s: no command has the flag --%s", k, k)
		}
	}
}

func checkAgent(t *testing.T, m *manifests) {
	var agent *workload
	for _, w := range m.workloads {
		if w.Kind == "DaemonSet" && slices.ContainsFunc(w.Pod.Containers, func(c corev1.Container) bool { return commandOf(c) == "agent" }) {
			agent = w
		}
	}
	if agent == nil {
		t.Fatal("no DaemonSet runs the agent")
	}
	if !agent.Pod.HostPID {
		t.Error("agent: hostPID is off; it would see only its own processes")
	}
	for _, c := range agent.Pod.Containers {
		if commandOf(c) != "agent" {
			continue
		}
		if c.SecurityContext == nil || !ptrTrue(c.SecurityContext.Privileged) {
			t.Error("agent: not privileged")
		}
		mounts := map[string]bool{}
		for _, vm := range c.VolumeMounts {
			mounts[vm.MountPath] = true
		}
		for _, p := range []string{"/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/bpf"} {
			if !mounts[p] {
				t.Errorf("agent: %s is not mounted", p)
			}
		}
		host := false
		for _, e := range c.Env {
			host = host || (e.Name == "DEEPTRACE_HOST" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
		}
		if !host {
			t.Error("agent: DEEPTRACE_HOST is not the node's name (spec.nodeName)")
		}
	}
}

func checkProduction(t *testing.T, m *manifests) {
	for _, name := range []string{"deeptrace-scheduler", "deeptrace-api"} {
		if w := m.workload("Deployment", name); w == nil || w.Replicas < 2 {
			t.Errorf("%s: want at least 2 replicas in production", name)
		}
	}
	for _, h := range m.hpas {
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			t.Errorf("HorizontalPodAutoscaler/%s: want minReplicas of at least 2 in production", h.Name)
		}
	}
	for _, name := range []string{"scheduler", "worker", "api"} {
		if !slices.ContainsFunc(m.pdbs, func(b *policyv1.PodDisruptionBudget) bool {
			return b.Spec.Selector.MatchLabels["app.kubernetes.io/component"] == name
		}) {
			t.Errorf("no PodDisruptionBudget for the %s", name)
		}
	}
	for _, p := range m.policies {
		if p.Name == "deeptrace-api-ingress" && slices.ContainsFunc(p.Spec.Ingress, func(r networkingv1.NetworkPolicyIngressRule) bool { return len(r.From) == 0 }) {
			t.Error("deeptrace-api-ingress: the API is open to every source in production")
		}
	}
	var cfg map[string]any
	for name, cm := range m.configMaps {
		if strings.HasPrefix(name, "deeptrace-config") {
			if err := yaml.Unmarshal([]byte(cm.Data["deeptrace.yaml"]), &cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	init, _ := cfg["init"].(map[string]any)
	if shards, _ := init["shards"].(int); shards < 2 {
		t.Errorf("init.shards %v: want several primary shards in production", init["shards"])
	}
	if replicas, _ := init["replicas"].(int); replicas < 1 {
		t.Errorf("init.replicas %v: want at least one replica in production", init["replicas"])
	}
}

// TestStrictDecoding makes sure the decoder the checks rely on refuses a
// misspelt field instead of dropping it.
func TestStrictDecoding(t *testing.T) {
	bad := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n")
	if _, _, err := decoder(t).Decode(bad, nil, nil); err == nil || !strings.Contains(err.Error(), `unknown field "spec.replica"`) {
		t.Fatalf("a misspelt field decoded: %v", err)
	}
}

// TestProbePathsServed starts each command the manifests probe over HTTP,
// on the test engines, with the probed port's flag on a free loopback
// port, and asks it for every probed path: each must answer 200. The
// agent (eBPF, root) is not started; its probes are on the shared ops
// endpoint (internal/ops), which retention serves the same way.
func TestProbePathsServed(t *testing.T) {
	bin := loadBinary(t)
	byTarget := map[probe]map[string]bool{}
	for _, overlay := range overlays {
		m := load(t, overlay)
		var ps []probe
		t.Run("collect-"+path.Base(overlay), func(t *testing.T) { ps = checkDeeptraceContainers(t, m, bin) })
		for _, p := range ps {
			target := probe{Command: p.Command, Flag: p.Flag}
			if p.Command == "agent" && p.Flag == ops.FlagListen {
				target.Command = "retention"
			}
			if byTarget[target] == nil {
				byTarget[target] = map[string]bool{}
			}
			byTarget[target][p.Path] = true
		}
	}
	if len(byTarget) == 0 {
		t.Fatal("no HTTP probes checked")
	}
	s := testenv.Store(t)
	rdb := testenv.Redis(t)
	for target, paths := range byTarget {
		t.Run(target.Command+"--"+target.Flag, func(t *testing.T) {
			flags := bin.byPath[target.Command]
			addr := freeAddr(t)
			args := strings.Fields(target.Command)
			args = append(args, "--"+target.Flag, addr)
			for flag, value := range map[string]string{
				"es-url": testenv.ESURL(), "es-engine": string(testenv.ESEngine()), "es-prefix": s.Indices().Prefix,
				"redis-addr": testenv.RedisAddr(), "redis-db": strconv.Itoa(rdb.Options().DB), "log-format": "text",
			} {
				if flags[flag] {
					args = append(args, "--"+flag, value)
				}
			}
			args = append(args, probeArgs[target.Command]...)
			var stderr bytes.Buffer
			cmd := exec.Command(bin.path, args...)
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			defer func() {
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case err := <-exited:
					if err != nil {
						t.Errorf("deeptrace %s after SIGTERM: %v\n%s", target.Command, err, stderr.String())
					}
				case <-time.After(15 * time.Second):
					cmd.Process.Kill()
					t.Errorf("deeptrace %s still running 15s after SIGTERM", target.Command)
				}
			}()
			deadline := time.Now().Add(20 * time.Second)
			for {
				res, err := http.Get("http://" + addr + ops.PathHealthz)
				if err == nil {
					res.Body.Close()
					break
				}
				select {
				case err := <-exited:
					t.Fatalf("deeptrace %v exited before serving: %v\n%s", args, err, stderr.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("deeptrace %v: nothing listens on %s: %v\n%s", args, addr, err, stderr.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
			for _, p := range slices.Sorted(maps.Keys(paths)) {
				res, err := http.Get("http://" + addr + p)
				if err != nil {
					t.Fatalf("GET %s: %v", p, err)
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Errorf("deeptrace %s: GET %s: %s %s", target.Command, p, res.Status, body)
				}
			}
		})
	}
}

// probeArgs are what a command needs beyond the engines to start.
var probeArgs = map[string][]string{
	"retention": {"--every", "1h", "--dry-run"},
	// A viewer token: the sha256 of "probe".
	"api": {"--token", "probe:viewer:" + fmt.Sprintf("%x", sha256.Sum256([]byte("probe")))},
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestDockerfile keeps the image's Go at least the module's and its
// entrypoint the binary the manifests' arguments are for.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	got := regexp.MustCompile(`(?m)^FROM golang:(\d+\.\d+)`).FindSubmatch(df)
	if want == nil || got == nil || string(got[1]) != string(want[1]) {
		t.Errorf("Dockerfile builds with Go %q, go.mod wants %q", got, want)
	}
	if !bytes.Contains(df, []byte(`ENTRYPOINT ["/deeptrace"]`)) || !bytes.Contains(df, []byte("./cmd/deeptrace")) {
		t.Error(`Dockerfile: want ./cmd/deeptrace built and ENTRYPOINT ["/deeptrace"]`)
	}
}
