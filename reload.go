package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// notifyHUP starts catching SIGHUP (before the watcher goroutine runs, so
// an early signal cannot kill the process) until stop is called.
func notifyHUP() (ch <-chan os.Signal, stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// watchTenants reloads the tenants file at path when its content changes
// (polled, which also sees Kubernetes' ConfigMap symlink swaps) or on
// SIGHUP, until ctx is done. reload turns the file's content into tenants;
// a file that it rejects, or the broker does, is logged and ignored: the
// previous tenants stay.
func watchTenants(ctx context.Context, path string, reload func(raw []byte) ([]broker.Tenant, error),
	b *broker.Broker, log *slog.Logger, every time.Duration, hup <-chan os.Signal) {
	var last [sha256.Size]byte
	if raw, err := os.ReadFile(path); err == nil {
		last = sha256.Sum256(raw)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-hup:
			forced = true
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			log.Error("tenants file unreadable; keeping the current tenants", "err", err)
			continue
		}
		sum := sha256.Sum256(raw)
		if !forced && bytes.Equal(sum[:], last[:]) {
			continue
		}
		last = sum
		tenants, err := reload(raw)
		if err == nil {
			err = b.SetTenants(tenants)
		}
		if err != nil {
			log.Error("tenants file rejected; keeping the current tenants", "path", path, "err", err)
			continue
		}
		log.Info("tenants reloaded", "tenants", b.TenantIDs())
	}
}

// relayHUP handles SIGHUP until ctx is done: each signal makes the
// verifiers fetch their JWKS at once and forget the tokens they remembered
// (so a key the identity provider removed stops verifying now, not at the
// next background refresh), and is passed on to tenants (the tenants-file
// watcher) when it is not nil. Nil verifiers are skipped.
func relayHUP(ctx context.Context, hup <-chan os.Signal, tenants chan<- os.Signal, log *slog.Logger, verifiers ...*session.Verifier) {
	for {
		var sig os.Signal
		select {
		case <-ctx.Done():
			return
		case sig = <-hup:
		}
		if tenants != nil {
			select {
			case tenants <- sig:
			default: // a reload is already pending
			}
		}
		failed := false
		for _, v := range verifiers {
			if v == nil {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := v.Refresh(rctx)
			cancel()
			if err != nil {
				failed = true
				log.Warn("SIGHUP: session keys not refreshed; keeping the loaded ones", "err", err)
			}
		}
		if !failed {
			log.Info("SIGHUP: session keys refreshed")
		}
	}
}
