package config

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/qtb-dev/qlik-token-broker/broker"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// The groups sync's settings: the session claim holding group names, the
// prefix of the custom groups the broker manages, and the bound on a
// claim's size. The claim and the prefix apply to every tenant; a
// tenants-file entry may override them. A tenant whose sessions carry the
// claim needs its admin client: the groups and users APIs are called with
// it.

// maxGroupsMax bounds QTB_GROUPS_MAX: Qlik allows 10,000 groups per tenant,
// and a claim is checked and hashed on every full session verification.
const maxGroupsMax = 1000

// checkGroupsClaim wants a claim name without surrounding spaces.
func checkGroupsClaim(s string) error {
	if strings.TrimSpace(s) != s {
		return fmt.Errorf("has leading or trailing spaces: %q", s)
	}
	return nil
}

// checkGroupsPrefix wants a prefix that can start a Qlik group name: at
// most 256 characters, no control characters.
func checkGroupsPrefix(s string) error {
	switch {
	case utf8.RuneCountInString(s) > session.MaxGroupNameChars:
		return fmt.Errorf("must be at most %d characters", session.MaxGroupNameChars)
	case strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("must not contain control characters, got %q", s)
	}
	return nil
}

// checkGroups adds the problems of the global groups settings.
func (c Config) checkGroups(add func(env, format string, a ...any)) {
	if err := checkGroupsClaim(c.GroupsClaim); err != nil {
		add("QTB_GROUPS_CLAIM", "%v", err)
	}
	if err := checkGroupsPrefix(c.GroupsPrefix); err != nil {
		add("QTB_GROUPS_PREFIX", "%v", err)
	}
	if c.GroupsMax < 1 || c.GroupsMax > maxGroupsMax {
		add("QTB_GROUPS_MAX", "must be between 1 and %d, got %d", maxGroupsMax, c.GroupsMax)
	}
	switch {
	case c.TenantsFile != "":
		if err := tenantsGroupsAdmin(c.Tenants, c.GroupsClaim); err != nil {
			add("QTB_TENANTS_FILE", "%v", err)
		}
	case c.GroupsClaim != "" && c.AdminClientID == "":
		add("QTB_GROUPS_CLAIM", "syncing groups needs the admin client (QTB_ADMIN_CLIENT_ID and its secret or key): the groups and users APIs are called with it")
	}
}

// groupsWarnings: a groups claim without a prefix lets the sync add and
// remove every custom group of a synced user, which is rarely meant when
// anything else manages custom groups.
func (c Config) groupsWarnings() []string {
	var out []string
	if c.TenantsFile == "" && c.GroupsClaim != "" && c.GroupsPrefix == "" {
		out = append(out, "QTB_GROUPS_PREFIX: is empty: the groups sync adds and removes every custom group of the users it syncs; set a prefix when anything else manages custom groups")
	}
	for _, t := range c.Tenants {
		if cmp.Or(t.GroupsClaim, c.GroupsClaim) != "" && cmp.Or(t.GroupsPrefix, c.GroupsPrefix) == "" {
			out = append(out, fmt.Sprintf("QTB_TENANTS_FILE: tenant %s: no groupsPrefix (or QTB_GROUPS_PREFIX): the groups sync adds and removes every custom group of the users it syncs", t.ID))
		}
	}
	return out
}

// checkGroups returns the problems of a tenant's groups overrides.
func (t Tenant) checkGroups() []error {
	var errs []error
	if err := checkGroupsClaim(t.GroupsClaim); err != nil {
		errs = append(errs, fmt.Errorf("groupsClaim %w", err))
	}
	if err := checkGroupsPrefix(t.GroupsPrefix); err != nil {
		errs = append(errs, fmt.Errorf("groupsPrefix %w", err))
	}
	return errs
}

// tenantsGroupsAdmin refuses tenants whose sessions carry a groups claim
// (their own groupsClaim, or QTB_GROUPS_CLAIM) without an admin client.
func tenantsGroupsAdmin(tenants []Tenant, defaultClaim string) error {
	var errs []error
	for _, t := range tenants {
		if cmp.Or(t.GroupsClaim, defaultClaim) != "" && t.AdminClientID == "" {
			errs = append(errs, fmt.Errorf("tenant %s: syncing groups (groupsClaim or QTB_GROUPS_CLAIM) needs adminClientId and its secret or key file", t.ID))
		}
	}
	return errors.Join(errs...)
}

// groupsAdmin is the admin APIs a tenant's groups sync calls, or nil when
// its sessions carry no groups claim. Validate made sure a claim comes
// with an admin client (and so a directory).
func groupsAdmin(dir broker.Directory, claim string) broker.GroupAdmin {
	qd, ok := dir.(*broker.QlikDirectory)
	if claim == "" || !ok {
		return nil
	}
	return qd.Groups()
}
