// Command devicemanager-harness runs the upstream kubelet device manager
// (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager, the code the real kubelet runs) against a socket
// directory and lets a test drive it over stdin/stdout.
//
// The manager serves <dir>/kubelet.sock (v1beta1 Registration), deletes every other socket in <dir> at
// start (as the kubelet does), and dials the plugin sockets that register there. Nothing here re-implements
// the device plugin protocol: registration, ListAndWatch, GetPreferredAllocation, Allocate and
// PreStartContainer all go through the upstream code.
//
// Protocol: one command per line on stdin; exactly one JSON object per command on stdout, with "cmd" and
// "ok" fields (and "error" when ok is false). The first line on stdout is {"event":"ready",...} once the
// manager listens (with its generation and listen_unix_ns). Logs (klog) go to stderr, with a line
// "harness: generation N starting" before every start. Commands:
//
//	capacity                              capacity/allocatable/removed from GetCapacity
//	wait <res> <capacity|allocatable> <op> <n> [timeout_s]
//	                                      poll GetCapacity every 100ms until res's value <op> n
//	                                      (op is one of == != >= <= > <); ok=false on timeout
//	admit <res> <n> [<res> <n> ...]       create a pod (one container, limits=requests) and run
//	                                      Allocate + GetDeviceRunContainerOptions, as pod admission does
//	release <pod>                         drop a pod from the active pods and free its devices
//	pods                                  admitted pods and the devices the manager assigned them
//	stop | start | restart                kubelet stop/start: Stop, then a new manager on the same dir; start and
//	                                      restart answer the new generation and listen_unix_ns
//	registered <res> [timeout_s]          wait until res has capacity in the current generation; answers
//	                                      since_listen_s, the time from the manager listening to the first
//	                                      capacity (plugin registered and its first ListAndWatch applied;
//	                                      GetCapacity polled every millisecond from the moment it listens)
//	quit                                  stop the manager and exit (EOF on stdin does the same)
//
// --pods-file=PATH keeps the admitted pods in PATH (rewritten on admit and release, read at start), so a new
// harness process after a SIGKILL knows the pods the killed one admitted, as a restarted kubelet learns them
// from the API server; their devices come back from the device manager's own checkpoint.
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
	_ "unsafe" // for go:linkname

	cadvisorapi "github.com/google/cadvisor/lib/model"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// newManagerImpl is the unexported constructor that takes the kubelet socket path; the exported
// NewManagerImpl hard-codes /var/lib/kubelet/device-plugins/kubelet.sock. The upstream unit tests use
// it the same way (manager_test.go: setupDeviceManager). Go only refuses pull-linknames into the
// standard library, so this links against k8s.io/kubernetes v1.37.2; the signature is checked by
// scripts/build-tools.sh building this file against the pinned module (a mismatch is a link error or,
// if only types differ, a crash at the first call, which the e2e tests would show at once).
//
//go:linkname newManagerImpl k8s.io/kubernetes/pkg/kubelet/cm/devicemanager.newManagerImpl
func newManagerImpl(logger klog.Logger, socketPath string, topology []cadvisorapi.Node,
	topologyAffinityStore topologymanager.Store) (*devicemanager.ManagerImpl, error)

type sourcesReady struct{}

func (sourcesReady) AddSource(string) {}
func (sourcesReady) AllReady() bool   { return true }

type harness struct {
	dir    string
	logger klog.Logger
	out    *json.Encoder
	outMu  sync.Mutex

	mu      sync.Mutex
	pods    map[string]*v1.Pod // by name; the manager's activePods
	order   []string
	nextPod int
	mgr     *devicemanager.ManagerImpl

	podsFile string

	regMu      sync.Mutex
	regChanged *sync.Cond
	gen        int                  // manager generation: 1 for the first start, +1 for each start
	watching   int                  // generation whose registrations are being watched (0: none, stopped)
	listenAt   time.Time            // when the current generation's manager returned from Start (listening)
	registered map[string]time.Time // resource -> first capacity seen in the current generation
}

type savedPod struct {
	Name   string           `json:"name"`
	UID    string           `json:"uid"`
	Limits map[string]int64 `json:"limits"`
}

// savePods writes the active pods to --pods-file (atomic rename); called with h.mu held.
func (h *harness) savePods() {
	if h.podsFile == "" {
		return
	}
	saved := []savedPod{}
	for _, name := range h.order {
		pod := h.pods[name]
		saved = append(saved, savedPod{Name: pod.Name, UID: string(pod.UID), Limits: quantities(pod.Spec.Containers[0].Resources.Limits)})
	}
	data, err := json.Marshal(saved)
	if err == nil {
		tmp := h.podsFile + ".tmp"
		if err = os.WriteFile(tmp, data, 0o600); err == nil {
			err = os.Rename(tmp, h.podsFile)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness: saving pods:", err)
		os.Exit(3)
	}
}

// loadPods reads --pods-file, if any, into the active pods.
func (h *harness) loadPods() error {
	if h.podsFile == "" {
		return nil
	}
	data, err := os.ReadFile(h.podsFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var saved []savedPod
	if err := json.Unmarshal(data, &saved); err != nil {
		return fmt.Errorf("%s: %w", h.podsFile, err)
	}
	for _, sp := range saved {
		limits := v1.ResourceList{}
		for res, n := range sp.Limits {
			limits[v1.ResourceName(res)] = *resource.NewQuantity(n, resource.DecimalSI)
		}
		h.pods[sp.Name] = newPod(sp.Name, types.UID(sp.UID), limits)
		h.order = append(h.order, sp.Name)
		var num int
		if _, err := fmt.Sscanf(sp.Name, "pod-%d", &num); err == nil && num > h.nextPod {
			h.nextPod = num
		}
	}
	return nil
}

func newPod(name string, uid types.UID, limits v1.ResourceList) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "e2e", UID: uid},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name: "main", Image: "none",
			Resources: v1.ResourceRequirements{Limits: limits, Requests: limits.DeepCopy()},
		}}},
	}
}

// watchRegistrations polls GetCapacity every millisecond while generation gen runs, and records when each
// resource first has capacity (a restarted manager reports none until the plugin registered again).
func (h *harness) watchRegistrations(gen int, mgr *devicemanager.ManagerImpl) {
	for {
		h.regMu.Lock()
		if h.watching != gen {
			h.regMu.Unlock()
			return
		}
		h.regMu.Unlock()
		c, _, _ := mgr.GetCapacity(h.logger)
		now := time.Now()
		h.regMu.Lock()
		if h.watching != gen {
			h.regMu.Unlock()
			return
		}
		changed := false
		for res, q := range c {
			if _, seen := h.registered[string(res)]; !seen && q.Value() > 0 {
				h.registered[string(res)] = now
				changed = true
			}
		}
		if changed {
			h.regChanged.Broadcast()
		}
		h.regMu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) waitRegistered(args []string) (map[string]any, error) {
	if len(args) < 1 || len(args) > 2 {
		return nil, errors.New("usage: registered <res> [timeout_s]")
	}
	res := args[0]
	timeout := 30 * time.Second
	if len(args) == 2 {
		secs, err := strconv.ParseFloat(args[1], 64)
		if err != nil {
			return nil, fmt.Errorf("bad timeout %q", args[1])
		}
		timeout = time.Duration(secs * float64(time.Second))
	}
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		h.regMu.Lock()
		h.regChanged.Broadcast()
		h.regMu.Unlock()
	})
	defer timer.Stop()
	h.regMu.Lock()
	defer h.regMu.Unlock()
	for {
		at, ok := h.registered[res]
		if ok && h.mgr != nil {
			return map[string]any{
				"resource": res, "generation": h.gen, "since_listen_s": at.Sub(h.listenAt).Seconds(),
				"listen_unix_ns": h.listenAt.UnixNano(), "registered_unix_ns": at.UnixNano(),
			}, nil
		}
		if !time.Now().Before(deadline) {
			return map[string]any{"resource": res, "generation": h.gen},
				fmt.Errorf("%s did not register within %s of generation %d", res, timeout, h.gen)
		}
		h.regChanged.Wait()
	}
}

func (h *harness) generation() map[string]any {
	h.regMu.Lock()
	defer h.regMu.Unlock()
	return map[string]any{"generation": h.gen, "listen_unix_ns": h.listenAt.UnixNano()}
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
	pods := make([]*v1.Pod, 0, len(h.order))
	for _, name := range h.order {
		pods = append(pods, h.pods[name])
	}
	return pods
}

func (h *harness) start() error {
	if h.mgr != nil {
		return errors.New("manager already running")
	}
	// Before Start: every registration logged after this line belongs to this generation.
	fmt.Fprintf(os.Stderr, "harness: generation %d starting\n", h.gen+1)
	store := topologymanager.NewFakeManager(h.logger)
	mgr, err := newManagerImpl(h.logger, filepath.Join(h.dir, "kubelet.sock"), nil, store)
	if err != nil {
		return fmt.Errorf("newManagerImpl: %w", err)
	}
	if err := mgr.Start(h.logger, h.activePods, sourcesReady{}, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		return fmt.Errorf("Start: %w", err)
	}
	// Start returns right after net.Listen on kubelet.sock: plugins can register from here on.
	h.regMu.Lock()
	h.gen++
	h.listenAt = time.Now()
	h.registered = map[string]time.Time{}
	h.watching = h.gen
	gen := h.gen
	h.regMu.Unlock()
	h.mgr = mgr
	go h.watchRegistrations(gen, mgr)
	return nil
}

func (h *harness) stop() error {
	if h.mgr == nil {
		return nil
	}
	h.regMu.Lock()
	h.watching = 0 // ends the watcher of the generation being stopped
	h.regMu.Unlock()
	err := h.mgr.Stop(h.logger)
	h.mgr = nil
	return err
}

func quantities(l v1.ResourceList) map[string]int64 {
	m := make(map[string]int64, len(l))
	for k, q := range l {
		m[string(k)] = q.Value()
	}
	return m
}

func (h *harness) capacity() map[string]any {
	if h.mgr == nil {
		return map[string]any{"running": false, "capacity": map[string]int64{}, "allocatable": map[string]int64{}}
	}
	c, a, removed := h.mgr.GetCapacity(h.logger)
	if removed == nil {
		removed = []string{}
	}
	return map[string]any{"running": true, "capacity": quantities(c), "allocatable": quantities(a), "removed": removed}
}

func compare(v int64, op string, n int64) (bool, error) {
	switch op {
	case "==":
		return v == n, nil
	case "!=":
		return v != n, nil
	case ">=":
		return v >= n, nil
	case "<=":
		return v <= n, nil
	case ">":
		return v > n, nil
	case "<":
		return v < n, nil
	}
	return false, fmt.Errorf("unknown operator %q", op)
}

func (h *harness) wait(args []string) (map[string]any, error) {
	if len(args) < 4 || len(args) > 5 {
		return nil, errors.New("usage: wait <res> <capacity|allocatable> <op> <n> [timeout_s]")
	}
	res, field, op := args[0], args[1], args[2]
	if field != "capacity" && field != "allocatable" {
		return nil, fmt.Errorf("field must be capacity or allocatable, not %q", field)
	}
	n, err := strconv.ParseInt(args[3], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("bad count %q", args[3])
	}
	timeout := 30 * time.Second
	if len(args) == 5 {
		secs, err := strconv.ParseFloat(args[4], 64)
		if err != nil {
			return nil, fmt.Errorf("bad timeout %q", args[4])
		}
		timeout = time.Duration(secs * float64(time.Second))
	}
	if _, err := compare(0, op, n); err != nil {
		return nil, err
	}
	start := time.Now()
	for {
		snap := h.capacity()
		var v int64
		if snap["running"] == true {
			v = snap[field].(map[string]int64)[res]
		}
		if ok, _ := compare(v, op, n); ok {
			snap["value"] = v
			snap["waited_s"] = time.Since(start).Seconds()
			return snap, nil
		}
		if time.Since(start) >= timeout {
			return snap, fmt.Errorf("timed out after %s: %s %s = %d, wanted %s %d", timeout, res, field, v, op, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (h *harness) podDevices(pod *v1.Pod) map[string][]string {
	devs := map[string][]string{}
	if h.mgr == nil {
		return devs
	}
	for res, byNUMA := range h.mgr.GetDevices(string(pod.UID), pod.Spec.Containers[0].Name) {
		ids := []string{}
		for id := range byNUMA {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		devs[res] = ids
	}
	return devs
}

func (h *harness) admit(args []string) (map[string]any, error) {
	if h.mgr == nil {
		return nil, errors.New("manager is stopped")
	}
	if len(args) == 0 || len(args)%2 != 0 {
		return nil, errors.New("usage: admit <res> <n> [<res> <n> ...]")
	}
	limits := v1.ResourceList{}
	for i := 0; i < len(args); i += 2 {
		q, err := resource.ParseQuantity(args[i+1])
		if err != nil {
			return nil, fmt.Errorf("bad quantity %q: %w", args[i+1], err)
		}
		limits[v1.ResourceName(args[i])] = q
	}
	h.mu.Lock()
	h.nextPod++
	name := fmt.Sprintf("pod-%d", h.nextPod)
	pod := newPod(name, types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", h.nextPod)), limits)
	// The kubelet adds a pod to its pod manager before admission, so it is active during Allocate;
	// the device manager frees the devices of any pod missing from activePods.
	h.pods[name] = pod
	h.order = append(h.order, name)
	h.savePods()
	h.mu.Unlock()

	ctx := klog.NewContext(context.Background(), h.logger)
	result := map[string]any{"pod": name, "uid": string(pod.UID)}
	result, err := h.allocate(ctx, pod, limits, result)
	if err != nil {
		// Admission failed: the kubelet rejects the pod, and with it any devices it got.
		h.forget(name)
		h.mgr.UpdateAllocatedDevices(h.logger)
	}
	return result, err
}

func (h *harness) allocate(ctx context.Context, pod *v1.Pod, limits v1.ResourceList, result map[string]any) (map[string]any, error) {
	ctr := &pod.Spec.Containers[0]
	begin := time.Now()
	if err := h.mgr.Allocate(ctx, pod, ctr, lifecycle.AddOperation); err != nil {
		return result, fmt.Errorf("Allocate: %w", err)
	}
	result["allocate_s"] = time.Since(begin).Seconds()
	opts, err := h.mgr.GetDeviceRunContainerOptions(ctx, pod, ctr)
	if err != nil {
		return result, fmt.Errorf("GetDeviceRunContainerOptions: %w", err)
	}
	devices := h.podDevices(pod)
	result["devices"] = devices
	for k, v := range runOptions(opts) {
		result[k] = v
	}
	// The device manager skips resources no plugin registered (the kubelet's admission predicate would
	// have rejected the pod on node allocatable first); report that as a failure rather than an empty success.
	for res, q := range limits {
		if int64(len(devices[string(res)])) != q.Value() {
			return result, fmt.Errorf("%s: asked for %d devices, the manager assigned %d (is the resource registered?)",
				res, q.Value(), len(devices[string(res)]))
		}
	}
	return result, nil
}

func runOptions(opts *devicemanager.DeviceRunContainerOptions) map[string]any {
	envs := map[string]string{}
	mounts := []map[string]any{}
	devs := []map[string]any{}
	annotations := map[string]string{}
	cdi := []string{}
	if opts != nil {
		for _, e := range opts.Envs {
			envs[e.Name] = e.Value
		}
		for _, m := range opts.Mounts {
			mounts = append(mounts, map[string]any{
				"container_path": m.ContainerPath, "host_path": m.HostPath, "read_only": m.ReadOnly,
			})
		}
		for _, d := range opts.Devices {
			devs = append(devs, map[string]any{
				"container_path": d.PathInContainer, "host_path": d.PathOnHost, "permissions": d.Permissions,
			})
		}
		for _, a := range opts.Annotations {
			annotations[a.Name] = a.Value
		}
		for _, c := range opts.CDIDevices {
			cdi = append(cdi, c.Name)
		}
	}
	return map[string]any{
		"envs": envs, "mounts": mounts, "device_specs": devs, "annotations": annotations, "cdi_devices": cdi,
	}
}

func (h *harness) forget(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.pods[name]; !ok {
		return false
	}
	delete(h.pods, name)
	for i, n := range h.order {
		if n == name {
			h.order = append(h.order[:i], h.order[i+1:]...)
			break
		}
	}
	h.savePods()
	return true
}

func (h *harness) listPods() []map[string]any {
	pods := []map[string]any{}
	for _, pod := range h.activePods() {
		pods = append(pods, map[string]any{
			"pod": pod.Name, "uid": string(pod.UID), "devices": h.podDevices(pod),
		})
	}
	return pods
}

func (h *harness) handle(line string) (quit bool) {
	fields := strings.Fields(line)
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return false
	}
	cmd, args := fields[0], fields[1:]
	resp := map[string]any{}
	var err error
	switch cmd {
	case "capacity":
		resp = h.capacity()
	case "wait":
		var r map[string]any
		r, err = h.wait(args)
		if r != nil {
			resp = r
		}
	case "admit":
		var r map[string]any
		r, err = h.admit(args)
		if r != nil {
			resp = r
		}
	case "release":
		if len(args) != 1 {
			err = errors.New("usage: release <pod>")
		} else if !h.forget(args[0]) {
			err = fmt.Errorf("no pod %q", args[0])
		} else if h.mgr != nil {
			h.mgr.UpdateAllocatedDevices(h.logger)
		}
	case "pods":
		resp["pods"] = h.listPods()
	case "stop":
		err = h.stop()
	case "start":
		if err = h.start(); err == nil {
			resp = h.generation()
		}
	case "restart":
		if err = h.stop(); err == nil {
			err = h.start()
		}
		if err == nil {
			resp = h.capacity()
			for k, v := range h.generation() {
				resp[k] = v
			}
		}
	case "registered":
		var r map[string]any
		r, err = h.waitRegistered(args)
		if r != nil {
			resp = r
		}
	case "quit", "exit":
		err = h.stop()
		quit = true
	default:
		err = fmt.Errorf("unknown command %q", cmd)
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
	dir := flag.String("socket-dir", "", "device plugin directory: the manager serves <dir>/kubelet.sock and removes every other socket in it at start (required)")
	podsFile := flag.String("pods-file", "", "keep the admitted pods in this file across harness processes (optional)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "devicemanager-harness: --socket-dir is required")
		os.Exit(2)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devicemanager-harness:", err)
		os.Exit(2)
	}
	h := &harness{
		dir:    abs,
		logger: klog.Background().WithName("devicemanager-harness"),
		out:    json.NewEncoder(os.Stdout),
		pods:   map[string]*v1.Pod{},

		podsFile: *podsFile,
	}
	h.regChanged = sync.NewCond(&h.regMu)
	if err := h.loadPods(); err != nil {
		h.emit(map[string]any{"event": "error", "ok": false, "error": err.Error()})
		os.Exit(1)
	}
	if err := h.start(); err != nil {
		h.emit(map[string]any{"event": "error", "ok": false, "error": err.Error()})
		os.Exit(1)
	}
	ready := map[string]any{"event": "ready", "ok": true, "socket": filepath.Join(abs, "kubelet.sock"), "pid": os.Getpid()}
	for k, v := range h.generation() {
		ready[k] = v
	}
	h.emit(ready)

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64*1024), 1024*1024)
	for in.Scan() {
		if h.handle(in.Text()) {
			klog.Flush()
			return
		}
	}
	_ = h.stop()
	klog.Flush()
}
