package broker

import (
	"context"
	"net/http"
	"strings"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// Groups from the session. The impersonation token request cannot carry
// groups: the tenant applies the groups the user already has. So for a
// tenant with a groups claim the broker keeps the user's Qlik custom groups
// in step with the claim before it answers a token (groupsync.go does the
// calls). What it may touch is bounded:
//
//   - only custom groups (providerType "custom"): IdP and system groups, and
//     their memberships, are never created, added or removed;
//   - only groups whose name starts with the tenant's prefix: claim names
//     outside it are left out of the sync (logged at debug), and the user's
//     custom groups outside it are never removed.
//
// A sync runs when the claim's set (within the prefix) differs from the
// last set synced for the user, remembered by hash in Redis (in memory
// without it); the same set again costs no admin call.

// GroupsHeader is the response header of /v1/token saying what became of
// the session's groups: GroupsSynced when this request synced them (or
// waited for the sync of another request of the same user), GroupsPending
// when they could not be synced now (tenant cooling down after a 429, the
// user's budget spent, the tenant failing) and the token the user already
// holds is answered; the sync is tried again on a later request. Absent
// when nothing needed syncing.
const GroupsHeader = "X-QTB-Groups"

// Values of GroupsHeader.
const (
	GroupsSynced  = "synced"
	GroupsPending = "pending"
)

var (
	hdrGroupsSynced  = []string{GroupsSynced}
	hdrGroupsPending = []string{GroupsPending}
)

// GroupAdmin is what the broker needs of a tenant's admin APIs to keep a
// user's custom groups in step with the session. *qlik.Admin, with the
// tenant's admin client, is the implementation.
type GroupAdmin interface {
	FindUserBySubject(ctx context.Context, subject string) (qlik.User, error)
	UserGroups(ctx context.Context, userID string) ([]qlik.Group, error)
	FindCustomGroup(ctx context.Context, name string) (qlik.Group, error)
	CreateCustomGroup(ctx context.Context, name string) (qlik.Group, error)
	PatchUserGroups(ctx context.Context, userID string, add, remove []string) error
}

var _ GroupAdmin = (*qlik.Admin)(nil)

// GroupsClaim names the session claim holding the groups of the tenant's
// users ("" when the tenant syncs no groups), for the session verifier's
// GroupsClaim. An empty tenant is the only tenant, as for sessions without
// a tenant claim.
func (b *Broker) GroupsClaim(tenant string) string {
	up, err := b.tenantFor(session.Identity{Tenant: tenant})
	if err != nil || up.tenant.Groups == nil {
		return ""
	}
	return up.tenant.GroupsClaim
}

// scopedGroups returns the names (sorted, unique, as the session gives
// them) that start with prefix, and how many were left out.
func scopedGroups(names []string, prefix string) (in []string, out int) {
	if prefix == "" {
		return names, 0
	}
	in = make([]string, 0, len(names))
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			in = append(in, n)
		}
	}
	return in, len(names) - len(in)
}

// groupsHash names a synced set: the HMAC (keyed like key names) of the
// prefix and the names, so the stored value reveals no group name. The
// prefix is part of it: a new prefix is a new set to sync.
func (b *Broker) groupsHash(prefix string, names []string) string {
	return b.hashTag(append([]string{prefix}, names...)...)
}

// inScope reports whether the broker may add or remove the user's
// membership of g: a custom group within the prefix.
func inScope(g qlik.Group, prefix string) bool {
	return g.ProviderType == "custom" && strings.HasPrefix(g.Name, prefix)
}

// diffGroups compares the user's groups with the wanted names (sorted,
// unique, within prefix): the names to add and the in-scope groups to
// remove. Groups out of scope (IdP, system, other custom groups) are
// neither counted as present nor removed.
func diffGroups(current []qlik.Group, want []string, prefix string) (add []string, remove []qlik.Group) {
	have := make(map[string]bool, len(current))
	wanted := make(map[string]bool, len(want))
	for _, n := range want {
		wanted[n] = true
	}
	for _, g := range current {
		if !inScope(g, prefix) {
			continue
		}
		have[g.Name] = true
		if !wanted[g.Name] {
			remove = append(remove, g)
		}
	}
	for _, n := range want {
		if !have[n] {
			add = append(add, n)
		}
	}
	return add, remove
}

// groupsKey is where the hash of the user's last synced set is kept:
// qtb:groups:<tenant>:{<hash>}, the user's hash tag as in the token key.
func (k keys) groups() string { return "qtb:groups:" + strings.TrimPrefix(k.token, "qtb:tok:") }

// groupsLease is the lease of one user's sync across the replicas:
// qtb:groupslock:<tenant>:{<hash>}.
func (k keys) groupsLease() string {
	return "qtb:groupslock:" + strings.TrimPrefix(k.token, "qtb:tok:")
}

// groupsNote travels on a /v1/token request's context: the budget its
// sync's writes spend from and what became of the sync, for GroupsHeader.
type groupsNote struct {
	budget  *budget
	outcome []string // hdrGroupsSynced, hdrGroupsPending or nil
}

type groupsCtxKey struct{}

// withGroupsNote returns ctx carrying a note for the identity's sync, its
// writes spending from the identity's bucket of users (nil: no limit).
func withGroupsNote(ctx context.Context, users *userLimiter, id session.Identity) (context.Context, *groupsNote) {
	n := &groupsNote{}
	if users != nil {
		n.budget = &budget{users: users, keys: []string{identityKey(id)}}
	}
	return context.WithValue(ctx, groupsCtxKey{}, n), n
}

func noteGroups(ctx context.Context, outcome []string) {
	if n, _ := ctx.Value(groupsCtxKey{}).(*groupsNote); n != nil {
		n.outcome = outcome
	}
}

// spendGroupsBudget takes one call from the budget of the request: the
// proxy's and service tokens' (budget.go), or the /v1/token note's.
func (b *Broker) spendGroupsBudget(ctx context.Context) error {
	if err := b.spendBudget(ctx); err != nil {
		return err
	}
	if n, _ := ctx.Value(groupsCtxKey{}).(*groupsNote); n != nil {
		return b.spend(n.budget)
	}
	return nil
}

// setGroupsHeader puts the note's outcome on the answer.
func setGroupsHeader(h http.Header, n *groupsNote) {
	if n != nil && n.outcome != nil {
		h[GroupsHeader] = n.outcome
	}
}
