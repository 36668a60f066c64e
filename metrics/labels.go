package metrics

// Redis operations, the label values of RedisErrors.
const (
	RedisOpGet     = "get"
	RedisOpSet     = "set"
	RedisOpDelete  = "delete"
	RedisOpLock    = "lock"
	RedisOpRelease = "release"
	RedisOpPublish = "publish"
	RedisOpRate    = "rate" // the shared upstream rate limit
)

// Unseal failure reasons, the label values of UnsealFailures (the cache
// package's names for them).
const (
	UnsealTampered   = "tampered"
	UnsealUnknownKey = "unknown_key"
	UnsealMalformed  = "malformed"
)

// LabelValues lists, by metric name (without the qlik_token_broker_
// prefix) and label, every value the broker gives a label whose values
// are a closed set. The README's metrics table is tested against it, so
// a value added here must be documented there.
func LabelValues() map[string]map[string][]string {
	return map[string]map[string][]string{
		"cache_lookups_total":         {"tier": {TierL1, TierRedis}, "result": {ResultHit, ResultMiss, ResultError}},
		"cache_unseal_failures_total": {"reason": {UnsealTampered, UnsealUnknownKey, UnsealMalformed}},
		"token_leases_total":          {"result": {LeaseAcquired, LeaseWaited, LeaseTakenOver, LeaseError}},
		"token_refreshes_total":       {"result": {RefreshRefreshed, RefreshAdopted, RefreshSkipped, RefreshError}},
		"token_suspect_checks_total": {"result": {SuspectConfirmed, SuspectReplaced, SuspectLoggedOut, SuspectAccepted,
			SuspectRefused, SuspectUnchecked}},
		"token_rejections_total": {"cause": {RejectCooldown, RejectBreakerOpen, RejectQueueTimeout, RejectSharedRate,
			RejectUserRateLimit, RejectUnknownUser, RejectInvalidClient, RejectRememberedRefusal}},
		"redis_errors_total":      {"op": {RedisOpGet, RedisOpSet, RedisOpDelete, RedisOpLock, RedisOpRelease, RedisOpPublish, RedisOpRate}},
		"upstream_requests_total": {"outcome": {OutcomeSuccess, OutcomeClientError, OutcomeRateLimited, OutcomeServerError, OutcomeNetwork, OutcomeTimeout, OutcomeMalformed}},
		"proxy_requests_total":    {"method_class": {"read", "write"}},
		"groups_syncs_total":      {"result": {GroupsSynced, GroupsUnchanged, GroupsDeferred, GroupsPartial, GroupsFailed}},
		"groups_changes_total":    {"change": {GroupChangeAdded, GroupChangeRemoved, GroupChangeCreated, GroupChangeFailed}},
	}
}
