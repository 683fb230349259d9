// Command dra-harness runs the upstream kubelet DRA manager (k8s.io/kubernetes/pkg/kubelet/cm/dra, the code the
// real kubelet runs) and the kubelet's plugin manager (pkg/kubelet/pluginmanager, which watches
// plugins_registry/) against a real apiserver, and lets a test drive it over stdin/stdout.
//
// Nothing here re-implements the DRA node protocol: plugin discovery and registration (GetInfo, validation,
// NotifyRegistrationStatus), NodePrepareResources / NodeUnprepareResources (batching, claim-info cache and its
// checkpoint, CDI device lists), the resource health stream, and the wiping of the node's ResourceSlices at
// start-up and after a driver deregisters all go through the upstream code. The harness stands in for the rest
// of the kubelet: it reads pods from the apiserver and calls the manager as pod admission and termination do.
//
// Protocol: one command per line on stdin; exactly one JSON object per command on stdout, with "cmd" and "ok"
// fields (and "error" when ok is false). The first line is {"event":"ready",...}. Logs (klog) go to stderr.
//
//	registered <driver> [timeout_s]   wait until the plugin manager registered the driver (and it is connected)
//	prepare <namespace> <pod>         GET the pod; PrepareResources (admission); GetResources per container
//	unprepare <namespace> <pod>       UnprepareResources (termination) and forget the pod
//	health <namespace> <pod>          UpdateAllocatedResourcesStatus for the pod (what the status manager shows)
//	updates                           pod UIDs the manager flagged through its health update channel so far
//	restart                           kubelet restart: stop both managers, start new ones on the same state
//	quit                              stop and exit (EOF on stdin does the same)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	pluginwatcherapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	draplugin "k8s.io/kubernetes/pkg/kubelet/cm/dra/plugin"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
)

type sourcesReady struct{}

func (sourcesReady) AddSource(string) {}
func (sourcesReady) AllReady() bool   { return true }

type harness struct {
	client      kubernetes.Interface
	nodeName    string
	registryDir string
	stateDir    string
	logger      klog.Logger

	out   *json.Encoder
	outMu sync.Mutex

	mu      sync.Mutex
	pods    map[string]*v1.Pod // namespace/name -> pod, the kubelet's active pods
	updates []string

	mgr    *dra.Manager
	cancel context.CancelFunc
	stopCh chan struct{}
	done   sync.WaitGroup
}

func (h *harness) emit(v map[string]any) {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	if err := h.out.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "harness: writing stdout:", err)
		os.Exit(3)
	}
}

func (h *harness) activePods() []*v1.Pod {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*v1.Pod, 0, len(h.pods))
	for _, p := range h.pods {
		out = append(out, p)
	}
	return out
}

func (h *harness) getNode(ctx context.Context) (*v1.Node, error) {
	return h.client.CoreV1().Nodes().Get(ctx, h.nodeName, metav1.GetOptions{})
}

// start builds the DRA manager and the plugin manager the way the kubelet does (kubelet.go / container_manager_linux.go).
func (h *harness) start() error {
	if h.mgr != nil {
		return errors.New("already running")
	}
	mgr, err := dra.NewManager(h.logger, h.client, h.stateDir)
	if err != nil {
		return fmt.Errorf("dra.NewManager: %w", err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), h.logger))
	if err := mgr.Start(ctx, h.activePods, h.getNode, sourcesReady{}); err != nil {
		cancel()
		return fmt.Errorf("Start: %w", err)
	}
	pm := pluginmanager.NewPluginManager(h.registryDir, &record.FakeRecorder{})
	pm.AddHandler(pluginwatcherapi.DRAPlugin, mgr.GetWatcherHandler())
	stopCh := make(chan struct{})
	h.done.Add(2)
	go func() {
		defer h.done.Done()
		pm.Run(ctx, sourcesReady{}, stopCh)
	}()
	go func() {
		defer h.done.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case u := <-mgr.Updates():
				h.mu.Lock()
				h.updates = append(h.updates, u.PodUIDs...)
				h.mu.Unlock()
			}
		}
	}()
	h.mgr, h.cancel, h.stopCh = mgr, cancel, stopCh
	return nil
}

func (h *harness) stop() {
	if h.mgr == nil {
		return
	}
	close(h.stopCh)
	h.cancel()
	h.mgr.Stop()
	h.done.Wait()
	h.mgr = nil
}

func (h *harness) registered(args []string) (map[string]any, error) {
	if len(args) < 1 || len(args) > 2 {
		return nil, errors.New("usage: registered <driver> [timeout_s]")
	}
	timeout := 30 * time.Second
	if len(args) == 2 {
		secs, err := strconv.ParseFloat(args[1], 64)
		if err != nil {
			return nil, fmt.Errorf("bad timeout %q", args[1])
		}
		timeout = time.Duration(secs * float64(time.Second))
	}
	pm, ok := h.mgr.GetWatcherHandler().(*draplugin.DRAPluginManager)
	if !ok {
		return nil, errors.New("unexpected plugin handler type")
	}
	start := time.Now()
	for {
		if _, err := pm.GetPlugin(args[0]); err == nil {
			return map[string]any{"waited_s": time.Since(start).Seconds()}, nil
		} else if time.Since(start) >= timeout {
			return nil, fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) pod(ctx context.Context, args []string, fetch bool) (*v1.Pod, error) {
	if len(args) != 2 {
		return nil, errors.New("usage: <cmd> <namespace> <pod>")
	}
	key := args[0] + "/" + args[1]
	if !fetch {
		h.mu.Lock()
		p, ok := h.pods[key]
		h.mu.Unlock()
		if ok {
			return p, nil
		}
	}
	p, err := h.client.CoreV1().Pods(args[0]).Get(ctx, args[1], metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (h *harness) prepare(ctx context.Context, args []string) (map[string]any, error) {
	pod, err := h.pod(ctx, args, true)
	if err != nil {
		return nil, err
	}
	// The kubelet's pod manager knows the pod before admission; the DRA reconcile loop unprepares claims
	// of pods that are not active, so the pod is active from here on.
	h.mu.Lock()
	h.pods[args[0]+"/"+args[1]] = pod
	h.mu.Unlock()
	begin := time.Now()
	if err := h.mgr.PrepareResources(ctx, pod); err != nil {
		return map[string]any{"pod_uid": string(pod.UID)}, err
	}
	took := time.Since(begin).Seconds()
	cdi := map[string][]string{}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		info, err := h.mgr.GetResources(pod, c)
		if err != nil {
			return nil, fmt.Errorf("GetResources(%s): %w", c.Name, err)
		}
		ids := []string{}
		for _, d := range info.CDIDevices {
			ids = append(ids, d.Name)
		}
		sort.Strings(ids)
		cdi[c.Name] = ids
	}
	return map[string]any{"pod_uid": string(pod.UID), "cdi": cdi, "prepare_s": took}, nil
}

func (h *harness) unprepare(ctx context.Context, args []string) (map[string]any, error) {
	pod, err := h.pod(ctx, args, false)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	delete(h.pods, args[0]+"/"+args[1])
	h.mu.Unlock()
	if err := h.mgr.UnprepareResources(ctx, pod); err != nil {
		return nil, err
	}
	return map[string]any{"pod_uid": string(pod.UID)}, nil
}

func (h *harness) health(ctx context.Context, args []string) (map[string]any, error) {
	pod, err := h.pod(ctx, args, false)
	if err != nil {
		return nil, err
	}
	status := &v1.PodStatus{}
	for _, c := range pod.Spec.Containers {
		status.ContainerStatuses = append(status.ContainerStatuses, v1.ContainerStatus{Name: c.Name})
	}
	h.mgr.UpdateAllocatedResourcesStatus(h.logger, pod, status)
	out := map[string]any{}
	for _, cs := range status.ContainerStatuses {
		resources := map[string]any{}
		for _, rs := range cs.AllocatedResourcesStatus {
			list := []map[string]any{}
			for _, r := range rs.Resources {
				entry := map[string]any{"id": string(r.ResourceID), "health": string(r.Health)}
				if r.Message != nil {
					entry["message"] = *r.Message
				}
				list = append(list, entry)
			}
			sort.Slice(list, func(i, j int) bool { return list[i]["id"].(string) < list[j]["id"].(string) })
			resources[string(rs.Name)] = list
		}
		out[cs.Name] = resources
	}
	return map[string]any{"containers": out}, nil
}

func (h *harness) handle(line string) (quit bool) {
	fields := strings.Fields(line)
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return false
	}
	cmd, args := fields[0], fields[1:]
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), h.logger), 90*time.Second)
	defer cancel()
	resp := map[string]any{}
	var r map[string]any
	var err error
	if h.mgr == nil && cmd != "quit" && cmd != "exit" && cmd != "restart" {
		err = errors.New("manager is stopped")
		cmd = "error:" + cmd
	}
	switch cmd {
	case "registered":
		r, err = h.registered(args)
	case "prepare":
		r, err = h.prepare(ctx, args)
	case "unprepare":
		r, err = h.unprepare(ctx, args)
	case "health":
		r, err = h.health(ctx, args)
	case "updates":
		h.mu.Lock()
		r = map[string]any{"pod_uids": append([]string{}, h.updates...)}
		h.mu.Unlock()
	case "restart":
		h.stop()
		err = h.start()
	case "quit", "exit":
		h.stop()
		quit = true
	default:
		if err == nil {
			err = fmt.Errorf("unknown command %q", cmd)
		}
	}
	for k, v := range r {
		resp[k] = v
	}
	resp["cmd"] = cmd
	resp["ok"] = err == nil
	if err != nil {
		resp["error"] = err.Error()
	}
	h.emit(resp)
	return quit
}

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig of the apiserver (required)")
	nodeName := flag.String("node-name", "", "name of the Node this kubelet stands for (required)")
	registryDir := flag.String("registry-dir", "", "plugins_registry directory the plugin watcher watches (required)")
	stateDir := flag.String("state-dir", "", "directory of the DRA manager's checkpoint (required)")
	flag.Parse()
	if *kubeconfig == "" || *nodeName == "" || *registryDir == "" || *stateDir == "" {
		fmt.Fprintln(os.Stderr, "dra-harness: --kubeconfig, --node-name, --registry-dir and --state-dir are required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dra-harness:", err)
		os.Exit(2)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dra-harness:", err)
		os.Exit(2)
	}
	reg, _ := filepath.Abs(*registryDir)
	state, _ := filepath.Abs(*stateDir)
	for _, d := range []string{reg, state} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			fmt.Fprintln(os.Stderr, "dra-harness:", err)
			os.Exit(2)
		}
	}
	h := &harness{
		client: client, nodeName: *nodeName, registryDir: reg, stateDir: state,
		logger: klog.Background().WithName("dra-harness"),
		out:    json.NewEncoder(os.Stdout),
		pods:   map[string]*v1.Pod{},
	}
	if err := h.start(); err != nil {
		h.emit(map[string]any{"event": "error", "ok": false, "error": err.Error()})
		os.Exit(1)
	}
	h.emit(map[string]any{"event": "ready", "ok": true, "registry_dir": reg, "pid": os.Getpid()})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64*1024), 1024*1024)
	for in.Scan() {
		if h.handle(in.Text()) {
			klog.Flush()
			return
		}
	}
	h.stop()
	klog.Flush()
}
