package broker

import "github.com/qtb-dev/qlik-token-broker/qlik"

// WaitBackground waits for the background refreshes started so far, so
// tests can observe their effect without sleeping.
func (b *Broker) WaitBackground() { b.bg.Wait() }

// TokenKey exposes the Redis key name of a user, for tests that read or
// tamper with Redis directly.
func (b *Broker) TokenKey(field, value string) string {
	return b.keysFor(b.tenants.Load().only, qlikLookup(field, value)).token
}

func qlikLookup(field, value string) qlik.UserLookup {
	return qlik.UserLookup{Field: field, Value: value}
}

// L1Generation is how many times the invalidation subscription came back
// (suspect.go), for tests that must wait for it.
func (b *Broker) L1Generation() uint32 { return b.l1Gen.Load() }

// WakeLogoutRetries runs the pending logout retries now instead of after
// their back-off, as the subscription coming back does.
func (b *Broker) WakeLogoutRetries() { b.pendingLogouts.wake() }
