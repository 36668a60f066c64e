package qliktest

import "maps"

// Call names one route of the tenant, "METHOD pattern", for CallsTo. Any
// route in the routing table can be named; the constants are the ones
// group sync tests count.
type Call string

// Routes of the users and groups APIs.
const (
	CallUserList    Call = "GET /api/v1/users"
	CallUserCreate  Call = "POST /api/v1/users"
	CallUserGet     Call = "GET /api/v1/users/{id}"
	CallUserPatch   Call = "PATCH /api/v1/users/{id}"
	CallGroupList   Call = "GET /api/v1/groups"
	CallGroupCreate Call = "POST /api/v1/groups"
	CallGroupGet    Call = "GET /api/v1/groups/{id}"
)

func callOf(rt route) Call { return Call(rt.method + " " + rt.pattern) }

// CallsTo returns how many requests reached route c, counted like Calls:
// faulted, rate-limited and refused ones included.
func (t *Tenant) CallsTo(c Call) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.routeCalls[c]
}

// CallCounts returns the count of every route called at least once since
// the start or ResetCounters, so a test can assert the exact set of calls
// (an empty map: none at all).
func (t *Tenant) CallCounts() map[Call]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[Call]int, len(t.routeCalls))
	maps.Copy(out, t.routeCalls)
	return out
}
