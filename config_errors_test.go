package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestServeListsKeyProblemsWithTheRest: a short session HMAC secret,
// algorithms that do not fit the key and a bad tenant URL come in one
// list, each named by its variable, not one at a time as
// "session: session: invalid config: ...".
func TestServeListsKeyProblemsWithTheRest(t *testing.T) {
	const secret = "too-short-secret"
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"serve"}, envFunc(map[string]string{
		"QTB_TENANT_URL":          "ftp://tenant.example.com/path",
		"QTB_CLIENT_ID":           "c",
		"QTB_CLIENT_SECRET":       "s",
		"QTB_SESSION_HMAC_SECRET": secret,
		"QTB_SESSION_ALGORITHMS":  "RS256,HS256",
		"QTB_CREATE_USERS":        "true",
		"QTB_SERVICE_HMAC_SECRET": "short-too",
		"QTB_SERVICE_AUDIENCE":    "jobs",
	}), &stdout, &stderr)
	if err == nil {
		t.Fatal("run accepted an invalid configuration")
	}
	msg := err.Error()
	for _, want := range []string{
		"QTB_TENANT_URL: qlik: tenant URL scheme",
		"QTB_SESSION_HMAC_SECRET: must be at least 32 bytes",
		`QTB_SESSION_ALGORITHMS: "RS256" cannot be used with an HMAC secret`,
		"QTB_CREATE_USERS: creates users only for email lookups",
		"QTB_SERVICE_HMAC_SECRET: must be at least 32 bytes",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "session: session:") || strings.Contains(msg, "invalid config:") {
		t.Errorf("a problem is reported in the session package's words, not by variable:\n%s", msg)
	}
	if strings.Contains(msg+stdout.String()+stderr.String(), secret) {
		t.Errorf("the secret leaked:\n%s", msg)
	}
}
