package session_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qtb-dev/qlik-token-broker/session"
)

// The groups claim is read per tenant, checked whole, and handed on sorted
// and de-duplicated; a claim that cannot be synced as it is rejects the
// token (bad_groups_claim).
func TestGroupsClaim(t *testing.T) {
	k := keys()
	claimFor := func(tenant string) string {
		switch tenant {
		case "acme":
			return "groups"
		case "globex":
			return "roles"
		}
		return ""
	}
	v := newVerifier(t, session.Config{HMACSecret: k.hmac, TenantClaim: "tenant", GroupsClaim: claimFor, MaxGroups: 3})
	tok := func(over map[string]any) string {
		return sign(t, jwt.SigningMethodHS256, k.hmac, claims(over), nil)
	}
	long := strings.Repeat("é", session.MaxGroupNameChars)
	tests := []struct {
		name   string
		over   map[string]any
		want   []string
		has    bool
		reason session.Reason
	}{
		{"absent", map[string]any{"tenant": "acme"}, nil, false, ""},
		{"empty list", map[string]any{"tenant": "acme", "groups": []string{}}, []string{}, true, ""},
		{"sorted, de-duplicated", map[string]any{"tenant": "acme", "groups": []string{"b", "a", "b"}}, []string{"a", "b"}, true, ""},
		{"256 characters", map[string]any{"tenant": "acme", "groups": []string{long}}, []string{long}, true, ""},
		{"the tenant's own claim", map[string]any{"tenant": "globex", "roles": []string{"x"}, "groups": 7}, []string{"x"}, true, ""},
		{"a tenant without groups", map[string]any{"tenant": "initech", "groups": 7}, nil, false, ""},
		{"a string, not a list", map[string]any{"tenant": "acme", "groups": "a b"}, nil, false, session.ReasonGroupsClaim},
		{"an object", map[string]any{"tenant": "acme", "groups": map[string]any{"a": true}}, nil, false, session.ReasonGroupsClaim},
		{"null", map[string]any{"tenant": "acme", "groups": []any{nil}}, nil, false, session.ReasonGroupsClaim},
		{"a number entry", map[string]any{"tenant": "acme", "groups": []any{"a", 1}}, nil, false, session.ReasonGroupsClaim},
		{"an empty name", map[string]any{"tenant": "acme", "groups": []any{"a", " "}}, nil, false, session.ReasonGroupsClaim},
		{"a control character", map[string]any{"tenant": "acme", "groups": []any{"a\nb"}}, nil, false, session.ReasonGroupsClaim},
		{"257 characters", map[string]any{"tenant": "acme", "groups": []string{long + "x"}}, nil, false, session.ReasonGroupsClaim},
		{"more than the max", map[string]any{"tenant": "acme", "groups": []string{"a", "b", "c", "d"}}, nil, false, session.ReasonGroupsClaim},
		{"more than the max with duplicates", map[string]any{"tenant": "acme", "groups": []string{"a", "a", "a", "a"}}, nil, false, session.ReasonGroupsClaim},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.Verify(context.Background(), tok(tc.over))
			if tc.reason != "" {
				wantReason(t, err, tc.reason)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.HasGroups != tc.has || !slices.Equal(id.Groups, tc.want) || (tc.has && id.Groups == nil) {
				t.Fatalf("groups = %q (claimed %v), want %q (claimed %v)", id.Groups, id.HasGroups, tc.want, tc.has)
			}
		})
	}
}

// Without GroupsClaim nothing is read, whatever the token carries.
func TestGroupsClaimOff(t *testing.T) {
	k := keys()
	v := newVerifier(t, session.Config{HMACSecret: k.hmac})
	id, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, k.hmac, claims(map[string]any{"groups": 7}), nil))
	if err != nil || id.HasGroups || id.Groups != nil {
		t.Fatalf("identity %+v, err %v", id, err)
	}
}
