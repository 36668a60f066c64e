package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/qtb-dev/qlik-token-broker/cache"
	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// groupsHashTTL is how long a synced set is remembered. Past it the next
// request re-reads the user's groups (one Tier 1 call) and syncs what
// drifted meanwhile (an administrator's change in the console).
const groupsHashTTL = 24 * time.Hour

// groupIDTTL is how long a custom group's id is remembered by name.
const groupIDTTL = time.Hour

// syncGroups brings the user's custom groups within the tenant's prefix in
// step with names (the session's claim, sorted and unique) unless that set
// is the one synced last. Concurrent requests of one user share one sync
// in this process, and across replicas one holds a Redis lease while the
// others wait for the hash it stores. It reports whether a sync ran (and
// succeeded) for this request.
func (b *Broker) syncGroups(ctx context.Context, up *upstream, k keys, user qlik.UserLookup, names []string) (bool, error) {
	prefix := up.tenant.GroupsPrefix
	want, left := scopedGroups(names, prefix)
	hash := b.groupsHash(prefix, want)
	key := k.groups()
	if b.groupsSynced(ctx, key, hash) {
		return false, nil
	}
	if left > 0 && b.log.Enabled(ctx, slog.LevelDebug) {
		var out []string
		for _, n := range names {
			if !strings.HasPrefix(n, prefix) {
				out = append(out, n)
			}
		}
		b.log.DebugContext(ctx, "groups outside the tenant's prefix are left out of the sync",
			"tenant", up.tenant.ID, "prefix", prefix, "left_out", out)
	}
	ch := b.flight.DoChan(key+"\x00"+hash, func() (any, error) {
		// Detached from the first caller, as a fill is: its going away
		// must not fail the others. Values (budget, trace) are kept.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.fetchTimeout)
		defer cancel()
		return nil, b.coalescedSync(sctx, up, k, hash, user, want)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return false, fmt.Errorf("%w: %w", errGroupsSync, r.Err)
		}
		return true, nil
	case <-ctx.Done():
		return false, fmt.Errorf("broker: waiting for the groups sync: %w", ctx.Err())
	}
}

// groupsMemo is a user's last synced set as this process knows it: its
// hash, and when Redis (or this process's own sync) last confirmed it.
type groupsMemo struct {
	hash string
	at   int64 // Unix ns
}

// groupsSynced reports whether hash is the user's last synced set: Redis
// when there is one (the replicas share it), memory without it or while
// Redis fails. With Redis and L1, a set confirmed within QTB_L1_TTL is
// trusted without asking Redis again, as an L1 token copy is, so a request
// whose groups have not changed costs no Redis round trip; a changed set
// always asks.
func (b *Broker) groupsSynced(ctx context.Context, key, hash string) bool {
	memo, ok := b.groupHashes.Get(key)
	known := ok && memo.hash == hash
	if b.shared == nil {
		return known
	}
	now := b.now().UnixNano()
	if known && b.l1 != nil && now-memo.at < int64(b.l1TTL) {
		return true
	}
	raw, err := b.shared.Get(ctx, key)
	switch {
	case err == nil:
		if string(raw) != hash {
			return false
		}
		_ = b.groupHashes.Set(key, groupsMemo{hash: hash, at: now}, groupsHashTTL)
		return true
	case errors.Is(err, cache.ErrMiss):
		return false
	}
	b.redisError(ctx, "get", err)
	return known
}

// rememberSynced stores hash as the user's synced set, here and in Redis.
func (b *Broker) rememberSynced(ctx context.Context, key, hash string) {
	_ = b.groupHashes.Set(key, groupsMemo{hash: hash, at: b.now().UnixNano()}, groupsHashTTL)
	if b.shared != nil {
		if err := b.shared.Set(ctx, key, []byte(hash), groupsHashTTL); err != nil {
			b.redisError(ctx, "set", err)
		}
	}
}

// coalescedSync runs one sync across the replicas: under the user's
// groups lease, or after waiting for the holder to store the same hash.
// A holder that fails releases the lease and the next waiter tries.
func (b *Broker) coalescedSync(ctx context.Context, up *upstream, k keys, hash string, user qlik.UserLookup, want []string) error {
	if b.shared == nil {
		return b.syncNow(ctx, up, k.groups(), hash, user, want)
	}
	waited := false
	for delay := b.leasePoll; ; delay = min(2*delay, 250*time.Millisecond) {
		if waited && b.groupsSynced(ctx, k.groups(), hash) {
			return nil
		}
		lease, ok, err := b.shared.TryLock(ctx, k.groupsLease(), b.leaseTTL)
		if err != nil {
			b.redisError(ctx, "lock", err)
			return b.syncNow(ctx, up, k.groups(), hash, user, want)
		}
		if ok {
			defer b.holdLease(ctx, lease)()
			// The holder before us may have synced just before we locked.
			if b.groupsSynced(ctx, k.groups(), hash) {
				return nil
			}
			return b.syncNow(ctx, up, k.groups(), hash, user, want)
		}
		waited = true
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for another replica's groups sync: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// groupsRun is one sync's tally, for its log line and metrics.
type groupsRun struct {
	added, removed, created, failed int
}

// syncNow makes the user's custom groups within the prefix equal want:
// read the user's groups (Tier 1), resolve the missing groups' ids (by
// name, cached; created when missing), then one PATCH of the difference.
// Every write (create, patch) is a Tier 2 call on the tenant's road
// (cooldown after a 429, slots, rate limits) and spends from the user's
// budget. The hash is stored only after the tenant applied everything.
func (b *Broker) syncNow(ctx context.Context, up *upstream, key, hash string, user qlik.UserLookup, want []string) (err error) {
	var run groupsRun
	defer func() { b.reportSync(ctx, up, run, err) }()
	// Writes are likely: do not even read while the tenant cools down.
	if err := up.road.checkCooldown(ctx); err != nil {
		return err
	}
	admin := up.tenant.Groups
	userID, err := b.groupsUserID(ctx, up, user)
	if err != nil {
		return err
	}
	prefix := up.tenant.GroupsPrefix
	for attempt := 0; ; attempt++ {
		current, err := b.userGroups(ctx, up, userID)
		if err != nil {
			return err
		}
		add, remove := diffGroups(current, want, prefix)
		if len(add) == 0 && len(remove) == 0 {
			b.rememberSynced(ctx, key, hash)
			return nil
		}
		addIDs := make([]string, 0, len(add))
		for _, name := range add {
			id, created, err := b.groupID(ctx, up, name)
			if err != nil {
				return err
			}
			if created {
				run.created++
			}
			addIDs = append(addIDs, id)
		}
		removeIDs := make([]string, 0, len(remove))
		for _, g := range remove {
			removeIDs = append(removeIDs, g.ID)
		}
		b.log.DebugContext(ctx, "syncing groups", "tenant", up.tenant.ID, "user_id", userID,
			"add", add, "remove", groupNames(remove))
		if err := b.spendGroupsBudget(ctx); err != nil {
			return err
		}
		err = up.road.write(ctx, endpointUserGroupsPatch, func(ctx context.Context) error {
			return admin.PatchUserGroups(ctx, userID, addIDs, removeIDs)
		})
		var partial *qlik.PartialPatchError
		switch {
		case err == nil:
			run.added, run.removed = len(addIDs), len(removeIDs)
			b.rememberSynced(ctx, key, hash)
			return nil
		case errors.As(err, &partial):
			run.failed = len(partial.Failed)
			run.added, run.removed = appliedOps(addIDs, removeIDs, partial.Failed)
			if partial.Unknown {
				run.failed = len(addIDs) + len(removeIDs)
				run.added, run.removed = 0, 0
			}
			b.log.DebugContext(ctx, "groups patch partly failed", "tenant", up.tenant.ID, "user_id", userID,
				"failed_group_ids", partial.Failed, "trace_id", partial.TraceID)
			return fmt.Errorf("%w: %d of %d membership changes failed (traceId %s)", errGroupsPartial, run.failed, len(addIDs)+len(removeIDs), partial.TraceID)
		case (qlikStatus(err, 400) != nil || qlikStatus(err, 404) != nil) && attempt == 0:
			// Nothing was applied: the user's groups changed since the
			// read (another sync, an administrator) or a remembered
			// group id went stale (a 400, or a 404 from a tenant that
			// names the group not found). Read again, resolve again,
			// once.
			for _, name := range add {
				b.groupIDs.Delete(up.tenant.ID + "\x00" + name)
			}
			continue
		default:
			return err
		}
	}
}

// appliedOps counts the adds and removes of a 207 that did not fail.
func appliedOps(add, remove, failed []string) (added, removed int) {
	bad := make(map[string]bool, len(failed))
	for _, id := range failed {
		bad[id] = true
	}
	for _, id := range add {
		if !bad[id] {
			added++
		}
	}
	for _, id := range remove {
		if !bad[id] {
			removed++
		}
	}
	return added, removed
}

func groupNames(gs []qlik.Group) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.Name
	}
	return out
}

// Endpoint labels of the sync's calls in upstream_requests_total.
const (
	endpointUsers           = "users"
	endpointUserGroups      = "user_groups"
	endpointGroups          = "groups"
	endpointGroupsCreate    = "groups_create"
	endpointUserGroupsPatch = "user_groups_patch"
)

// groupsUserID is the Qlik user id of the lookup: the value itself for a
// userId (an email was resolved to one already), a users API search for a
// subject.
func (b *Broker) groupsUserID(ctx context.Context, up *upstream, user qlik.UserLookup) (string, error) {
	if user.Field == qlik.FieldUserID {
		return user.Value, nil
	}
	start := b.now()
	u, err := up.tenant.Groups.FindUserBySubject(ctx, user.Value)
	observeUpstream(b.m, up.tenant.ID, endpointUsers, b.now().Sub(start), err)
	switch {
	case errors.Is(err, qlik.ErrUserNotFound):
		return "", fmt.Errorf("%w: no user has the session's subject", ErrUnknownUser)
	case err != nil:
		return "", fmt.Errorf("%w: users: %w", ErrUpstream, err)
	}
	return u.ID, nil
}

// userGroups reads the user's groups (Tier 1).
func (b *Broker) userGroups(ctx context.Context, up *upstream, userID string) ([]qlik.Group, error) {
	start := b.now()
	gs, err := up.tenant.Groups.UserGroups(ctx, userID)
	observeUpstream(b.m, up.tenant.ID, endpointUserGroups, b.now().Sub(start), err)
	if err != nil {
		return nil, fmt.Errorf("%w: user groups: %w", ErrUpstream, err)
	}
	return gs, nil
}

// groupID is the id of the custom group named name: remembered, found
// (Tier 1), or created (Tier 2; a 409 means another replica or an
// administrator created it meanwhile: found again).
func (b *Broker) groupID(ctx context.Context, up *upstream, name string) (id string, created bool, err error) {
	ck := up.tenant.ID + "\x00" + name
	if id, ok := b.groupIDs.Get(ck); ok {
		return id, false, nil
	}
	g, err := b.findGroup(ctx, up, name)
	if errors.Is(err, qlik.ErrGroupNotFound) {
		if err := b.spendGroupsBudget(ctx); err != nil {
			return "", false, err
		}
		err = up.road.write(ctx, endpointGroupsCreate, func(ctx context.Context) error {
			var cerr error
			g, cerr = up.tenant.Groups.CreateCustomGroup(ctx, name)
			return cerr
		})
		switch {
		case errors.Is(err, qlik.ErrGroupExists):
			g, err = b.findGroup(ctx, up, name)
		case err == nil:
			created = true
		}
	}
	if err != nil {
		var ue *UnavailableError
		if errors.As(err, &ue) || errors.Is(err, ErrUpstream) {
			return "", false, err
		}
		return "", false, fmt.Errorf("%w: groups: %w", ErrUpstream, err)
	}
	_ = b.groupIDs.Set(ck, g.ID, groupIDTTL)
	return g.ID, created, nil
}

func (b *Broker) findGroup(ctx context.Context, up *upstream, name string) (qlik.Group, error) {
	start := b.now()
	g, err := up.tenant.Groups.FindCustomGroup(ctx, name)
	if errors.Is(err, qlik.ErrGroupNotFound) {
		observeUpstream(b.m, up.tenant.ID, endpointGroups, b.now().Sub(start), nil)
	} else {
		observeUpstream(b.m, up.tenant.ID, endpointGroups, b.now().Sub(start), err)
	}
	return g, err
}

// reportSync writes the sync's one log line (info, or warn when it
// failed; counts only: group names may be personal data and go to debug)
// and its metrics.
func (b *Broker) reportSync(ctx context.Context, up *upstream, run groupsRun, err error) {
	result := metrics.GroupsSynced
	var ue *UnavailableError
	var re *userRateLimitedError
	switch {
	case err == nil && run.added+run.removed == 0:
		result = metrics.GroupsUnchanged
	case errors.As(err, &ue), errors.As(err, &re):
		result = metrics.GroupsDeferred
	case errors.Is(err, errGroupsPartial):
		result = metrics.GroupsPartial
	case err != nil:
		result = metrics.GroupsFailed
	}
	b.m.GroupSyncs.WithLabelValues(up.tenant.ID, result).Inc()
	for change, n := range map[string]int{metrics.GroupChangeAdded: run.added, metrics.GroupChangeRemoved: run.removed,
		metrics.GroupChangeCreated: run.created, metrics.GroupChangeFailed: run.failed} {
		if n > 0 {
			b.m.GroupChanges.WithLabelValues(up.tenant.ID, change).Add(float64(n))
		}
	}
	attrs := []any{"tenant", up.tenant.ID, "result", result, "added", run.added, "removed", run.removed,
		"created", run.created, "failed", run.failed}
	switch result {
	case metrics.GroupsSynced, metrics.GroupsUnchanged:
		b.log.InfoContext(ctx, "groups synced", attrs...)
	case metrics.GroupsDeferred:
		// Every request of a pending user tries again: counted, but
		// logged at debug so a cooldown does not flood the log.
		b.log.DebugContext(ctx, "groups sync deferred; retried on a later request", append(attrs, "err", err)...)
	default:
		b.log.WarnContext(ctx, "groups sync failed; retried on a later request", append(attrs, "err", err)...)
	}
}
