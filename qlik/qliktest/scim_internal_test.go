package qliktest

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzFilter checks the SCIM parser never panics, and that any value quoted
// as a JSON string is matched as one literal: the property a client's
// escaping relies on.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{"ada@example.com", `a"b`, `a\b`, `" or email co "`, "", "\u2028", "\xff", `((((`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = parseFilter(s, "email") // any input: an error or a filter, never a panic

		q, _ := json.Marshal(s)
		e, err := parseFilter("email eq "+string(q), "email")
		if err != nil {
			t.Fatalf("quoted %q: %v", s, err)
		}
		// json.Marshal turns invalid UTF-8 into U+FFFD, so compare with what
		// the tenant receives.
		var sent string
		_ = json.Unmarshal(q, &sent)
		if !e.match(func(string) string { return sent }) {
			t.Errorf("%q does not match itself", s)
		}
		if sent != "" && e.match(func(string) string { return sent + "x" }) {
			t.Errorf("%q matches a longer value", s)
		}
	})
}

func TestFilterDepthBound(t *testing.T) {
	deep := strings.Repeat("(", 33) + `email eq "a"` + strings.Repeat(")", 33)
	if _, err := parseFilter(deep, "email"); err == nil {
		t.Error("33 nested parentheses accepted")
	}
	ok := strings.Repeat("(", 32) + `email eq "a"` + strings.Repeat(")", 32)
	if _, err := parseFilter(ok, "email"); err != nil {
		t.Errorf("32 nested parentheses: %v", err)
	}
	if _, err := parseFilter(strings.Repeat("not (", 40)+`email pr`+strings.Repeat(")", 40), "email"); err == nil {
		t.Error("deep not ( accepted")
	}
}
