package cache

import (
	"cmp"
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// An open breaker waits BreakerOpen before a request may probe Redis; what
// Redis cannot answer meanwhile costs the broker (it serves its L1 copies,
// but cannot store, lease or heal). So while the breaker is open one
// goroutine watches for Redis coming back and closes the breaker at once:
// a PING every BreakerProbe, outside the breaker, and in Sentinel mode the
// Sentinels' +switch-master notice (go-redis acts on that notice for its
// own connections but tells its users nothing, so this listens itself).
// The goroutine runs only while the breaker is open, so a Redis that works
// costs nothing, and Close stops it.

// recovery is the state of a Redis' breaker recovery.
type recovery struct {
	probeEvery time.Duration // <= 0: no PINGs
	sentinels  *redis.FailoverOptions
	newBreaker func() *gobreaker.CircuitBreaker[struct{}]
	// newClient makes a client like the one in use, for PINGs. Each PING
	// has a client of its own: go-redis stops dialling for a second once a
	// pool's dials have failed PoolSize times (and only a background dial
	// resets that), so PINGs through the client in use would keep it from
	// reaching Redis for up to a second after Redis is back.
	newClient func() redis.UniversalClient

	mu      sync.Mutex
	running bool
	closed  bool
	wg      sync.WaitGroup
	cancel  context.CancelFunc // of the running recovery
}

func (rc *recovery) configure(opts RedisOptions, newClient func() redis.UniversalClient, sentinels *redis.FailoverOptions) {
	rc.probeEvery = cmp.Or(opts.BreakerProbe, DefaultBreakerProbe)
	rc.newClient = newClient
	rc.sentinels = sentinels
}

// startRecovery starts watching for Redis to come back, unless that is
// already being done or r is closed. It runs under the breaker's lock, so
// it must not wait for anything.
func (r *Redis) startRecovery() {
	rc := &r.recovery
	if rc.probeEvery <= 0 && rc.sentinels == nil {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.running || rc.closed {
		return
	}
	// Detached: it belongs to r, which Close stops, not to a request.
	ctx, cancel := context.WithCancel(context.Background())
	rc.running, rc.cancel = true, cancel
	rc.wg.Add(1)
	go r.recoverBreaker(ctx)
}

// stopRecovery stops the recovery for good and waits for it.
func (r *Redis) stopRecovery() {
	rc := &r.recovery
	rc.mu.Lock()
	rc.closed = true
	if rc.cancel != nil {
		rc.cancel()
	}
	rc.mu.Unlock()
	rc.wg.Wait()
}

// recoverBreaker closes the breaker when a PING is answered or a Sentinel
// announces a new master, and returns once the breaker is closed (by it or
// by a request's own probe) or ctx is done.
func (r *Redis) recoverBreaker(ctx context.Context) {
	rc := &r.recovery
	defer rc.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		rc.mu.Lock()
		rc.running = false
		rc.mu.Unlock()
		// The breaker may have opened again after it closed, while this
		// recovery was still marked running.
		if r.degraded.Load() {
			r.startRecovery()
		}
	}()

	switched := make(chan struct{}, 1)
	if rc.sentinels != nil {
		rc.wg.Add(1)
		go func() {
			defer rc.wg.Done()
			r.watchSwitch(ctx, switched)
		}()
	}
	var tick <-chan time.Time
	if rc.probeEvery > 0 {
		t := time.NewTicker(rc.probeEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-switched:
			if r.answers(ctx, false) {
				return
			}
		case <-tick:
			if !r.degraded.Load() || r.answers(ctx, true) {
				return
			}
		}
	}
}

// answers closes the breaker and returns true if Redis answers a PING:
// first (with probe) from a client of its own, which dials Redis whatever
// the client in use has been through, then from the client in use, which
// may still refuse to dial for a while after go-redis' own dial breaker
// tripped (closing ours then would only see calls fail and open it again).
func (r *Redis) answers(ctx context.Context, probe bool) bool {
	ctx, cancel := context.WithTimeout(ctx, max(r.recovery.probeEvery, DefaultRedisTimeout))
	defer cancel()
	if probe {
		c := r.recovery.newClient()
		err := c.Ping(ctx).Err()
		_ = c.Close()
		if err != nil {
			return false
		}
	}
	if r.client.Ping(ctx).Err() != nil {
		return false
	}
	r.closeBreaker()
	return true
}

// closeBreaker replaces the open breaker with a closed one: gobreaker
// cannot be closed from outside. Transitions of the old one are ignored
// from now on, and calls still running on it report to it.
func (r *Redis) closeBreaker() {
	r.breaker.Store(r.recovery.newBreaker())
	if r.degraded.CompareAndSwap(true, false) {
		r.notifier.push(false)
	}
	r.notifier.flush()
}

// watchSwitch listens to the Sentinels for +switch-master of our master
// and signals switched on the first, until ctx is done. It goes through
// the configured Sentinels in turn until one accepts the subscription.
func (r *Redis) watchSwitch(ctx context.Context, switched chan<- struct{}) {
	o := r.recovery.sentinels
	for wait := 50 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, time.Second) {
		for _, addr := range o.SentinelAddrs {
			if r.listenSwitch(ctx, addr, switched) {
				return
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// listenSwitch subscribes to +switch-master at one Sentinel and reports
// whether our master switched. It returns false when the Sentinel cannot
// be subscribed to or drops the subscription.
func (r *Redis) listenSwitch(ctx context.Context, addr string, switched chan<- struct{}) bool {
	o := r.recovery.sentinels
	c := redis.NewSentinelClient(&redis.Options{
		Addr:                  addr,
		Username:              o.SentinelUsername,
		Password:              o.SentinelPassword,
		TLSConfig:             o.TLSConfig,
		DialTimeout:           o.DialTimeout,
		ReadTimeout:           o.ReadTimeout,
		WriteTimeout:          o.WriteTimeout,
		DialerRetries:         1,
		MaxRetries:            -1,
		ContextTimeoutEnabled: true,
	})
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, max(o.DialTimeout+o.ReadTimeout, DefaultRedisTimeout))
	ps := c.Subscribe(sctx, "+switch-master")
	defer ps.Close()
	_, err := ps.Receive(sctx) // the subscription's confirmation
	cancel()
	if err != nil {
		return false
	}
	// ReceiveMessage does not watch ctx; closing the subscription ends it.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			return false
		}
		// "<master name> <old ip> <old port> <new ip> <new port>"
		if name, _, _ := strings.Cut(msg.Payload, " "); name == o.MasterName {
			select {
			case switched <- struct{}{}:
			default:
			}
			return true
		}
	}
}

// stateNotifier delivers breaker transitions to the OnStateChange callback
// outside the breaker's lock, in order and one at a time. push runs under
// the breaker's lock; flush runs after every call. A callback that calls
// into Redis finds delivery in progress and leaves its own transitions to
// the delivering loop.
type stateNotifier struct {
	fn func(degraded bool)

	mu         sync.Mutex
	pending    []bool
	delivering sync.Mutex
}

func (n *stateNotifier) push(degraded bool) {
	if n.fn == nil {
		return
	}
	n.mu.Lock()
	n.pending = append(n.pending, degraded)
	n.mu.Unlock()
}

func (n *stateNotifier) flush() {
	if n.fn == nil {
		return
	}
	for n.hasPending() {
		if !n.delivering.TryLock() {
			return // the holder delivers ours too: it checks again after unlocking
		}
		for {
			n.mu.Lock()
			if len(n.pending) == 0 {
				n.mu.Unlock()
				break
			}
			degraded := n.pending[0]
			n.pending = n.pending[1:]
			n.mu.Unlock()
			n.fn(degraded)
		}
		n.delivering.Unlock()
	}
}

func (n *stateNotifier) hasPending() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.pending) > 0
}
