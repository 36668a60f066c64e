package redistest

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterReadyWithin is how long a new cluster may take to agree on its
// slots after redis-cli created it.
const clusterReadyWithin = 20 * time.Second

// Cluster is a Redis Cluster of masters without replicas, owned by a test.
type Cluster struct {
	nodes []*Server
}

// StartCluster runs masters (at least 3) cluster-enabled redis-servers,
// joins them with redis-cli --cluster create, and waits until every node
// reports cluster_state:ok. The nodes stop when the test ends.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("redistest: a Redis Cluster needs at least 3 masters, not %d", masters)
	}
	lookPath(tb, "redis-server")
	lookPath(tb, "redis-cli")
	c := &Cluster{}
	for range masters {
		c.nodes = append(c.nodes, launch(tb, &Server{dir: tb.TempDir(), cluster: true}))
	}

	ctx, cancel := context.WithTimeout(tb.Context(), clusterReadyWithin)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cmd := exec.CommandContext(ctx, "redis-cli", args...)
	cmd.SysProcAttr = sysProcAttr()
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, n := range c.nodes {
		if err := n.waitClusterOK(ctx, masters); err != nil {
			tb.Fatalf("redistest: cluster node %s: %v\n%s", n.Addr(), err, n.log.tail(logTail))
		}
	}
	return c
}

// waitClusterOK polls CLUSTER INFO until the node sees the cluster as ok
// with every node known.
func (s *Server) waitClusterOK(ctx context.Context, nodes int) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	want := []string{"cluster_state:ok", fmt.Sprintf("cluster_known_nodes:%d", nodes)}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var info string
	for {
		info, _ = c.ClusterInfo(ctx).Result()
		if containsLines(info, want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready within %v: CLUSTER INFO:\n%s", clusterReadyWithin, info)
		case <-tick.C:
		}
	}
}

func containsLines(text string, lines []string) bool {
	have := map[string]bool{}
	for l := range strings.Lines(text) {
		have[strings.TrimSpace(l)] = true
	}
	for _, l := range lines {
		if !have[l] {
			return false
		}
	}
	return true
}

// Addrs returns the nodes' addresses, "127.0.0.1:PORT" each.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// URL returns the cluster's URL in redis.ParseClusterURL's form, naming
// the first node as host and the others as addr parameters.
func (c *Cluster) URL() string {
	q := url.Values{"addr": c.Addrs()[1:]}
	return "redis://" + c.nodes[0].Addr() + "?" + q.Encode()
}

// Nodes returns the cluster's servers, for outage tests.
func (c *Cluster) Nodes() []*Server { return c.nodes }

// Client returns a cluster client, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 c.Addrs(),
		DialerRetries:         1,
		MaxRetries:            1,
		ContextTimeoutEnabled: true,
	})
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// FlushAll deletes every key on every node.
func (c *Cluster) FlushAll(tb testing.TB) {
	tb.Helper()
	for _, n := range c.nodes {
		n.FlushAll(tb)
	}
}
