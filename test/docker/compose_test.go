// Package docker runs kvd as deploy/compose.yaml deploys it: the kvd image
// (make image), three containers, each its own host on a private network.
// It cuts a node off the network, kills and restarts containers, and
// restarts all three one at a time under a writing client.
//
// It needs Docker and docker-compose, and skips (one line) where either is
// missing or the daemon does not answer, and with -short.
package docker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kvdproject/kvd/client"
	"github.com/kvdproject/kvd/proto/kvpb"
)

const putMethod = "/kvd.v1.KV/Put"

// requireDocker skips the test, with one line, where it cannot run.
func requireDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds kvd's image and runs a compose cluster; skipped with -short")
	}
	for _, tool := range []string{"docker", "docker-compose"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed; skipping the container tests", tool)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	if err != nil {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		t.Skipf("the Docker daemon does not answer (%v: %s); skipping the container tests", err, first)
	}
}

// node is one compose service as the test reaches it.
type node struct {
	name      string
	container string // its container's id
	ip        string // its fixed address on the network
	published string // its client port on 127.0.0.1 (host side)
	kv        kvpb.KVClient
	cluster   kvpb.ClusterClient
}

// cluster is one compose project of deploy/compose.yaml.
type cluster struct {
	root     string // module root
	project  string
	env      []string
	netName  string
	nodes    []*node
	seeds    []string // the published client ports
	kvctl    string   // the kvctl binary built for the image
	upOutput string
	// The certificates the compose file's init step made, copied out of a
	// container: the CA and the client certificate of root.
	certs    string
	tls      *tls.Config
	kvctlTLS []string // KVD_CACERT, KVD_CERT, KVD_KEY for kvctl on this host
}

// inContainerTLS are the flags kvctl and kvd health need inside a node's
// container (the certs volume is mounted at /certs).
var inContainerTLS = []string{"--cacert", "/certs/ca.crt", "--cert", "/certs/client.root.crt", "--key", "/certs/client.root.key"}

// loadCerts copies the cluster's certificates out of n1's container and
// makes the client TLS configuration of this test.
func (c *cluster) loadCerts(t *testing.T) {
	t.Helper()
	c.certs = filepath.Join(t.TempDir(), "certs")
	c.docker(t, time.Minute, "cp", c.nodes[0].container+":/certs", c.certs)
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(c.certs, "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("the cluster's CA: %v", err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.certs, "client.root.crt"), filepath.Join(c.certs, "client.root.key"))
	if err != nil {
		t.Fatal(err)
	}
	c.tls = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	c.kvctlTLS = []string{
		"KVD_CACERT=" + filepath.Join(c.certs, "ca.crt"),
		"KVD_CERT=" + filepath.Join(c.certs, "client.root.crt"),
		"KVD_KEY=" + filepath.Join(c.certs, "client.root.key"),
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// run runs a command to its end (or ctx's) and returns its combined output.
func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// docker runs a docker command bounded by timeout and fails the test on error.
func (c *cluster) docker(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	out, err := run(ctx, c.env, "docker", args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func (c *cluster) compose(ctx context.Context, args ...string) (string, error) {
	base := []string{"-p", c.project, "-f", filepath.Join(c.root, "deploy", "compose.yaml")}
	return run(ctx, c.env, "docker-compose", append(base, args...)...)
}

// freePort returns a port below 32768 that is free on 127.0.0.1 now.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		p := 20000 + mrand.IntN(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port below 32768 in 100 tries")
	return 0
}

// startCluster builds the image under a tag of its own and starts
// deploy/compose.yaml as a project of its own, on a /24 and loopback ports
// nothing else uses. Cleanup takes it all down (docker-compose down -v) and
// removes the image.
func startCluster(t *testing.T) *cluster {
	id := randomHex(4)
	c := &cluster{root: moduleRoot(t), project: "kvdtest" + id}
	image := "kvd:test-" + id

	start := time.Now()
	imageContext := t.TempDir()
	c.kvctl = filepath.Join(imageContext, "kvctl")
	bctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	_, err := run(bctx, nil, "make", "-C", c.root, "image", "IMAGE="+image, "IMAGE_CONTEXT="+imageContext)
	cancel()
	if err != nil {
		t.Fatalf("make image: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := run(ctx, nil, "docker", "rmi", "-f", image); err != nil {
			t.Logf("docker rmi %s: %v\n%s", image, err, out)
		}
	})
	t.Logf("make image %s: %v", image, time.Since(start).Round(100*time.Millisecond))

	ports := []int{freePort(t), freePort(t), freePort(t)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			if out, err := c.compose(ctx, "logs", "--no-color", "--tail", "40"); err == nil {
				t.Logf("the cluster's last logs:\n%s", out)
			}
		}
		if out, err := c.compose(ctx, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	})
	// The network's /24 may be taken (by another project or a route):
	// try another.
	for try := 0; ; try++ {
		prefix := fmt.Sprintf("172.%d.%d", 20+mrand.IntN(12), mrand.IntN(256))
		c.env = []string{
			"KVD_IMAGE=" + image,
			"KVD_NET=" + prefix,
			"KVD_N1_PORT=" + strconv.Itoa(ports[0]),
			"KVD_N2_PORT=" + strconv.Itoa(ports[1]),
			"KVD_N3_PORT=" + strconv.Itoa(ports[2]),
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		out, err := c.compose(ctx, "up", "-d")
		cancel()
		if err == nil {
			c.upOutput = out
			c.nodes = nil
			for i := range 3 {
				c.nodes = append(c.nodes, &node{
					name:      "n" + strconv.Itoa(i+1),
					ip:        fmt.Sprintf("%s.%d", prefix, 11+i),
					published: "127.0.0.1:" + strconv.Itoa(ports[i]),
				})
			}
			break
		}
		// Another project's subnet, or a port taken since freePort.
		taken := strings.Contains(err.Error(), "overlaps") ||
			strings.Contains(err.Error(), "already allocated") || strings.Contains(err.Error(), "address already in use")
		if try == 4 || !taken {
			t.Fatalf("docker-compose up: %v", err)
		}
		ports = []int{freePort(t), freePort(t), freePort(t)}
		dctx, dcancel := context.WithTimeout(t.Context(), time.Minute)
		c.compose(dctx, "down", "-v", "--remove-orphans")
		dcancel()
	}
	c.netName = c.project + "_kvd"
	for _, n := range c.nodes {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		out, err := c.compose(ctx, "ps", "-q", n.name)
		cancel()
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("container of %s: %q, %v", n.name, out, err)
		}
		n.container = strings.TrimSpace(out)
	}
	c.loadCerts(t)
	for _, n := range c.nodes {
		conn, err := grpc.NewClient(n.published, grpc.WithTransportCredentials(credentials.NewTLS(c.tls)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		n.kv, n.cluster = kvpb.NewKVClient(conn), kvpb.NewClusterClient(conn)
		c.seeds = append(c.seeds, n.published)
	}
	return c
}

// waitHealthy waits until Docker reports the nodes' health checks (kvd
// health: serving, and a leader known) as passing.
func (c *cluster) waitHealthy(t *testing.T, timeout time.Duration, nodes ...*node) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, n := range nodes {
		for {
			st := c.docker(t, 30*time.Second, "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", n.container)
			if st == "running healthy" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is %q after %v; want \"running healthy\"", n.name, st, timeout)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
}

// leader asks the nodes in turn who leads, until one knows.
func (c *cluster) leader(t *testing.T, timeout time.Duration) *node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, n := range c.nodes {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			st, err := n.cluster.Status(ctx, &kvpb.StatusRequest{SkipStateHash: true})
			cancel()
			if err == nil && st.GetLeaderName() != "" {
				for _, l := range c.nodes {
					if l.name == st.GetLeaderName() {
						return l
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node names a leader after %v", timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) newClient(t *testing.T, endpoints []string) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Endpoints: endpoints, TLS: c.tls})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// within retries f (each try bounded to 3 s) until it succeeds or timeout.
func within(t *testing.T, timeout time.Duration, what string, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// staleValue reads key from n's own state.
func staleValue(ctx context.Context, n *node, key string) (string, error) {
	r, err := n.kv.Get(ctx, &kvpb.GetRequest{Key: []byte(key), Consistency: kvpb.Consistency_CONSISTENCY_STALE})
	if err != nil {
		return "", err
	}
	return string(r.GetKv().GetValue()), nil
}

// putAll writes keys with a client, each within 30 s, and fails the test on
// any error: every write it returns from was acknowledged.
func putAll(t *testing.T, cl *client.Client, kvs [][2]string) {
	t.Helper()
	for _, kv := range kvs {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		_, err := cl.Put(ctx, []byte(kv[0]), []byte(kv[1]))
		cancel()
		if err != nil {
			t.Fatalf("Put(%q) = %v", kv[0], err)
		}
	}
}

// checkAll reads every key linearizably through cl and wants its value.
func checkAll(t *testing.T, cl *client.Client, kvs [][2]string) {
	t.Helper()
	for _, kv := range kvs {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		r, err := cl.Get(ctx, []byte(kv[0]))
		cancel()
		if err != nil {
			t.Fatalf("Get(%q) = %v, want %q", kv[0], err, kv[1])
		}
		if got := string(r.GetKv().GetValue()); got != kv[1] {
			t.Fatalf("Get(%q) = %q, want %q", kv[0], got, kv[1])
		}
	}
}

func keys(prefix string, from, to int) [][2]string {
	var out [][2]string
	for i := from; i < to; i++ {
		out = append(out, [2]string{fmt.Sprintf("%s/%04d", prefix, i), fmt.Sprintf("v%d", i)})
	}
	return out
}

// TestCompose is the whole life of one compose cluster: each step runs on
// what the steps before left.
func TestCompose(t *testing.T) {
	requireDocker(t)
	begin := time.Now()
	c := startCluster(t)
	c.waitHealthy(t, 90*time.Second, c.nodes...)
	t.Logf("cluster up and healthy %v after the start of the test", time.Since(begin).Round(100*time.Millisecond))

	steps := []struct {
		name string
		f    func(t *testing.T, c *cluster)
	}{
		{"image and addresses", testImageAndAddresses},
		{"writes through every node", testWritesThroughEveryNode},
		{"partition", testPartition},
		{"kill and restart", testKillAndRestart},
		{"rolling restart", testRollingRestart},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.f(t, c) }) {
			return // the next steps build on this one
		}
	}
	t.Logf("whole test: %v", time.Since(begin).Round(100*time.Millisecond))
}

// testImageAndAddresses: the nodes run as the image's non-root user, each
// under its own hostname, client ports published on loopback only; every
// member advertises its published port, and kvctl on this host reaches them
// all, as the README shows.
func testImageAndAddresses(t *testing.T, c *cluster) {
	for _, n := range c.nodes {
		got := c.docker(t, 30*time.Second, "inspect", "-f", "{{.Config.User}} {{.Config.Hostname}}", n.container)
		if want := "10001:10001 " + n.name; got != want {
			t.Errorf("%s: user and hostname %q, want %q", n.name, got, want)
		}
		// ps inside the container's namespace, as the host sees it.
		// Every process in it (kvd, and a health check if one is
		// running) as the host's ps sees them.
		top := strings.Split(c.docker(t, 30*time.Second, "top", n.container, "-o", "uid,pid,args"), "\n")
		if len(top) < 2 || !strings.Contains(top[1], "/kvd") {
			t.Errorf("%s: docker top says %q; want kvd", n.name, top)
		}
		for _, line := range top[1:] {
			if uid, _, _ := strings.Cut(strings.TrimSpace(line), " "); uid != "10001" {
				t.Errorf("%s: process %q runs as uid %s, want 10001", n.name, line, uid)
			}
		}
		port := c.docker(t, 30*time.Second, "port", n.container, "2379/tcp")
		if port != n.published {
			t.Errorf("%s: client port published on %q, want only %s", n.name, port, n.published)
		}
	}
	cl := c.newClient(t, c.seeds)
	var ms *kvpb.MembersResponse
	within(t, 30*time.Second, "every member registered its client address", func(ctx context.Context) error {
		var err error
		if ms, err = cl.Members(ctx); err != nil {
			return err
		}
		for _, m := range ms.GetMembers() {
			if m.GetClientAddr() == "" {
				return fmt.Errorf("%s has no client address yet", m.GetName())
			}
		}
		return nil
	})
	for i, m := range ms.GetMembers() {
		n := c.nodes[i]
		if m.GetName() != n.name || m.GetClientAddr() != n.published || m.GetPeerAddr() != n.name+":2380" {
			t.Errorf("member %d = %s client %s peer %s; want %s client %s peer %s:2380",
				i, m.GetName(), m.GetClientAddr(), m.GetPeerAddr(), n.name, n.published, n.name)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := run(ctx, c.kvctlTLS, c.kvctl, "--endpoints", c.nodes[0].published, "-o", "json", "cluster", "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		if !strings.Contains(out, `"name":"`+n.name+`","peer_addr":"`+n.name+`:2380","client_addr":"`+n.published+`"`) {
			t.Errorf("kvctl cluster status does not list %s at %s:\n%s", n.name, n.published, out)
		}
	}
	if strings.Count(out, `"reachable":true`) != 3 || strings.Count(out, `"role":"leader"`) != 1 {
		t.Errorf("kvctl cluster status:\n%s\nwant three members reachable, one leader", out)
	}
}

// testWritesThroughEveryNode: a write sent to each node (a follower
// forwards it to the leader over the network) is read back from every node.
func testWritesThroughEveryNode(t *testing.T, c *cluster) {
	for _, n := range c.nodes {
		within(t, 30*time.Second, "Put through "+n.name, func(ctx context.Context) error {
			_, err := n.kv.Put(ctx, &kvpb.PutRequest{Key: []byte("through/" + n.name), Value: []byte("from " + n.name)})
			return err
		})
	}
	for _, reader := range c.nodes {
		for _, writer := range c.nodes {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			r, err := reader.kv.Get(ctx, &kvpb.GetRequest{Key: []byte("through/" + writer.name)})
			cancel()
			if err != nil || string(r.GetKv().GetValue()) != "from "+writer.name {
				t.Errorf("Get(through/%s) on %s = %q, %v; want %q", writer.name, reader.name, r.GetKv().GetValue(), err, "from "+writer.name)
			}
		}
	}
}

// testPartition cuts the leader off the network (docker network
// disconnect). The other two elect a leader and keep taking writes; the cut
// node refuses a linearizable read (it cannot confirm it leads) and reports
// itself unhealthy; reconnected, it follows the new leader and its own
// state catches up.
func testPartition(t *testing.T, c *cluster) {
	cut := c.leader(t, 30*time.Second)
	var rest []*node
	for _, n := range c.nodes {
		if n != cut {
			rest = append(rest, n)
		}
	}
	majority := c.newClient(t, []string{rest[0].published, rest[1].published})
	putAll(t, majority, [][2]string{{"partition/x", "v-before-cut"}})
	within(t, 30*time.Second, "the leader applied partition/x", func(ctx context.Context) error {
		v, err := staleValue(ctx, cut, "partition/x")
		if err == nil && v != "v-before-cut" {
			err = fmt.Errorf("stale Get(partition/x) on %s = %q", cut.name, v)
		}
		return err
	})

	c.docker(t, time.Minute, "network", "disconnect", c.netName, cut.container)
	cutAt := time.Now()
	t.Logf("cut %s (the leader) off the network", cut.name)

	after := keys("partition/k", 0, 20)
	putAll(t, majority, [][2]string{{"partition/x", "v-after-cut"}})
	firstWrite := time.Since(cutAt)
	putAll(t, majority, after)
	t.Logf("majority side: first write %v after the cut, then %d more", firstWrite.Round(time.Millisecond), len(after))

	// The cut node, asked from inside its own container.
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		out, err := run(ctx, nil, "docker", append([]string{"exec", cut.container, "/kvd", "health", "--endpoint", "127.0.0.1:2379"}, inContainerTLS...)...)
		cancel()
		if err != nil && strings.Contains(out, "knows no leader") {
			break
		}
		if i == 50 {
			t.Fatalf("kvd health in the cut %s: %v, %q; want \"knows no leader\"", cut.name, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	start := time.Now()
	out, err := run(ctx, nil, "docker", append(append([]string{"exec", cut.container, "/kvctl"}, inContainerTLS...),
		"--endpoints", "127.0.0.1:2379", "--timeout", "3s", "get", "partition/x")...)
	cancel()
	// Refused: not a value (exit 0), not "not found" (4: the key exists),
	// and not a usage error (2: this test's fault).
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 2 || exit.ExitCode() == 4 ||
		strings.Contains(out, "v-before-cut") || strings.Contains(out, "v-after-cut") {
		t.Fatalf("linearizable get on the cut %s: %v, %q; want it refused", cut.name, err, out)
	}
	t.Logf("the cut %s refused a linearizable read after %v: %s", cut.name, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))

	c.docker(t, time.Minute, "network", "connect", "--ip", cut.ip, "--alias", cut.name, c.netName, cut.container)
	reconnected := time.Now()
	within(t, 60*time.Second, "the reconnected node catches up", func(ctx context.Context) error {
		for _, kv := range append([][2]string{{"partition/x", "v-after-cut"}}, after...) {
			v, err := staleValue(ctx, cut, kv[0])
			if err != nil {
				return err
			}
			if v != kv[1] {
				return fmt.Errorf("stale Get(%s) on %s = %q, want %q", kv[0], cut.name, v, kv[1])
			}
		}
		return nil
	})
	t.Logf("%s reconnected: its own state had every write %v later", cut.name, time.Since(reconnected).Round(time.Millisecond))
	c.waitHealthy(t, 60*time.Second, cut)
	within(t, 30*time.Second, "linearizable read on the reconnected node", func(ctx context.Context) error {
		r, err := cut.kv.Get(ctx, &kvpb.GetRequest{Key: []byte("partition/x")})
		if err == nil && string(r.GetKv().GetValue()) != "v-after-cut" {
			t.Fatalf("linearizable Get(partition/x) on %s = %q, want %q", cut.name, r.GetKv().GetValue(), "v-after-cut")
		}
		return err
	})
}

// testKillAndRestart: docker kill (SIGKILL) the leader under writes, then
// every container at once; after restarts no acknowledged write is lost,
// and every node's own state holds them all.
func testKillAndRestart(t *testing.T, c *cluster) {
	cl := c.newClient(t, c.seeds)
	first := keys("durable", 0, 50)
	putAll(t, cl, first)

	victim := c.leader(t, 30*time.Second)
	c.docker(t, time.Minute, "kill", victim.container)
	killed := time.Now()
	second := keys("durable", 50, 100)
	putAll(t, cl, second[:1])
	t.Logf("killed the leader %s; the next write was acknowledged %v later", victim.name, time.Since(killed).Round(time.Millisecond))
	putAll(t, cl, second[1:])
	c.docker(t, time.Minute, "start", victim.container)
	c.waitHealthy(t, 60*time.Second, victim)

	var all []string
	for _, n := range c.nodes {
		all = append(all, n.container)
	}
	c.docker(t, time.Minute, append([]string{"kill"}, all...)...)
	c.docker(t, time.Minute, append([]string{"start"}, all...)...)
	restarted := time.Now()
	c.waitHealthy(t, 90*time.Second, c.nodes...)
	t.Logf("killed all three and started them: healthy again in %v", time.Since(restarted).Round(time.Millisecond))

	acked := append(first, second...)
	checkAll(t, cl, acked)
	for _, n := range c.nodes {
		within(t, 30*time.Second, n.name+"'s own state has every acknowledged write", func(ctx context.Context) error {
			for _, kv := range acked {
				v, err := staleValue(ctx, n, kv[0])
				if err != nil {
					return fmt.Errorf("stale Get(%s) on %s: %w", kv[0], n.name, err)
				}
				if v != kv[1] {
					return fmt.Errorf("stale Get(%s) on %s = %q, want %q", kv[0], n.name, v, kv[1])
				}
			}
			return nil
		})
	}
}

// testRollingRestart restarts the three containers one at a time (docker
// restart: SIGTERM, a graceful stop, then start), each time waiting for
// the health check to pass, while writers put keys through one Go client.
// The client must absorb every failure with retries: no request fails. The
// figures are logged.
func testRollingRestart(t *testing.T, c *cluster) {
	const writers = 4
	// Unary calls (no Pipeline stream): the attempt counter sees one gRPC
	// pick per unary call, while pipelined calls share one stream's pick.
	// The other subtests, and jepsen-lite's restarts, use the pipelined
	// default.
	cl, err := client.New(client.Config{Endpoints: c.seeds, TLS: c.tls, NoPipeline: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	var (
		requests, failures atomic.Int64
		mu                 sync.Mutex
		acked              [][2]string
		firstErr           error
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	startAttempts := attempts.get(putMethod)
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprintf("rolling/%d/%06d", w, i), strconv.Itoa(i)
				ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
				_, err := cl.Put(ctx, []byte(k), []byte(v))
				cancel()
				requests.Add(1)
				mu.Lock()
				if err != nil {
					failures.Add(1)
					if firstErr == nil {
						firstErr = fmt.Errorf("Put(%q): %w", k, err)
					}
				} else {
					acked = append(acked, [2]string{k, v})
				}
				mu.Unlock()
			}
		})
	}
	stopWriters := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopWriters()

	time.Sleep(time.Second) // writing before the first restart
	began, beganRequests := time.Now(), requests.Load()
	for _, n := range c.nodes {
		before, beforeAt := requests.Load(), time.Now()
		c.docker(t, time.Minute, "restart", "-t", "10", n.container)
		c.waitHealthy(t, 90*time.Second, n)
		t.Logf("restarted %s: healthy again after %v; %d requests finished meanwhile",
			n.name, time.Since(beforeAt).Round(time.Millisecond), requests.Load()-before)
	}
	took, during := time.Since(began), requests.Load()-beganRequests
	time.Sleep(time.Second) // and after the last
	stopWriters()

	n, failed := requests.Load(), failures.Load()
	tried := attempts.get(putMethod) - startAttempts
	t.Logf("rolling restart of 3 nodes in %v: %d requests (Put, %d writers) during it, %d from 1 s before to 1 s after; of those %d failed, and the client absorbed %d retries (%d attempts)",
		took.Round(time.Millisecond), during, writers, n, failed, int64(tried)-n, tried)
	if failed != 0 {
		t.Fatalf("%d of %d requests failed during the rolling restart; first: %v", failed, n, firstErr)
	}
	if n == 0 || int64(tried) < n {
		t.Fatalf("%d requests in %d attempts: want some requests, each at least one attempt", n, tried)
	}
	checkAll(t, cl, acked)
	t.Logf("all %d acknowledged writes read back", len(acked))
}
