package config

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/qtb-dev/qlik-token-broker/broker"
)

// The users directory's settings: the admin token's scope and the subject
// namespace of users created just in time. They apply to every tenant; a
// tenants-file entry may override them.

// checkAdminScope accepts the two scopes the users API takes.
func checkAdminScope(s string) error {
	if s != broker.DefaultAdminScope && s != broker.AdminScopeUsers {
		return fmt.Errorf("must be %s or %s, got %q", broker.DefaultAdminScope, broker.AdminScopeUsers, s)
	}
	return nil
}

// checkJITSubjectPrefix wants a short prefix without spaces or control
// characters: an empty one would make the bare email a subject, which a
// real IdP user may log in with.
func checkJITSubjectPrefix(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("must not be empty (default %q): a bare email as subject can collide with an IdP's subjects", broker.DefaultJITSubjectPrefix)
	case len(s) > 64:
		return fmt.Errorf("must be at most 64 bytes, got %d", len(s))
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("must not contain spaces or control characters, got %q", s)
	}
	return nil
}

// checkDirectory adds the problems of the global directory settings.
func (c Config) checkDirectory(add func(env, format string, a ...any)) {
	if err := checkAdminScope(c.AdminScope); err != nil {
		add("QTB_ADMIN_SCOPE", "%v", err)
	}
	if err := checkJITSubjectPrefix(c.JITSubjectPrefix); err != nil {
		add("QTB_JIT_SUBJECT_PREFIX", "%v", err)
	}
}

// checkDirectory returns the problems of a tenant's directory overrides.
func (t Tenant) checkDirectory() []error {
	var errs []error
	if t.AdminScope != "" {
		if err := checkAdminScope(t.AdminScope); err != nil {
			errs = append(errs, fmt.Errorf("adminScope %w", err))
		}
	}
	if t.JITSubjectPrefix != "" {
		if err := checkJITSubjectPrefix(t.JITSubjectPrefix); err != nil {
			errs = append(errs, fmt.Errorf("jitSubjectPrefix %w", err))
		}
	}
	return errs
}
