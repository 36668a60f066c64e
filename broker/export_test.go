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
