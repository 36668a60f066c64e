package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/cache/redistest"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// writeSecretFile writes value, with the newline a Secret mount often has,
// into a file of its own and returns its path.
func writeSecretFile(t *testing.T, name, value string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// with returns a copy of m with the key/value pairs kv added.
func with(m map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(m)+len(kv)/2)
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// TestServeAuthenticatesToSentinels runs the broker against a real master
// and Sentinel that each demand their own password. With
// QTB_REDIS_SENTINEL_PASSWORD_FILE the broker stores tokens on the master;
// without it, it says at start that the sentinels refused it (and, Redis
// being a soft dependency, still serves from the tenant). Neither password
// is logged, at debug level.
func TestServeAuthenticatesToSentinels(t *testing.T) {
	masterPassword, sentinelPassword := sentinel("redis-master-password"), sentinel("redis-sentinel-password")
	s := redistest.StartSentinelAuth(t, redistest.SentinelAuth{MasterPassword: masterPassword, SentinelPassword: sentinelPassword})
	env := map[string]string{
		"QTB_LOG_LEVEL":           "debug",
		"QTB_REDIS_MODE":          "sentinel",
		"QTB_REDIS_ADDRS":         s.SentinelAddr(),
		"QTB_REDIS_MASTER_NAME":   s.MasterName(),
		"QTB_REDIS_PASSWORD_FILE": writeSecretFile(t, "redis-password", masterPassword),
	}
	for _, tt := range []struct {
		name      string
		env       map[string]string
		wantStore bool
	}{
		{"with the sentinels' password", with(env, "QTB_REDIS_SENTINEL_PASSWORD_FILE", writeSecretFile(t, "sentinel-password", sentinelPassword)), true},
		{"without it", env, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s.Master().FlushAll(t)
			p := startInProc(t, inProcOptions{env: tt.env})
			ada := p.tenant.AddUser(qliktest.User{Name: "Ada", Status: "active"})
			if resp, body := p.do(t, "GET", "/v1/token", p.session(t, ada.ID), nil, nil); resp.StatusCode != 200 {
				t.Fatalf("GET /v1/token: %d %s\n%s", resp.StatusCode, body, p.logs.String())
			}
			keys, err := s.Master().Client(t).Keys(t.Context(), "qtb:tok:*").Result()
			if err != nil {
				t.Fatal(err)
			}
			logs := p.logs.String()
			const refused = "redis not reachable at start"
			switch {
			case tt.wantStore && len(keys) != 1:
				t.Errorf("token keys on the master: %q, want 1\n%s", keys, logs)
			case tt.wantStore && strings.Contains(logs, refused):
				t.Errorf("the broker could not reach Redis:\n%s", logs)
			case !tt.wantStore && len(keys) != 0:
				t.Errorf("token keys on the master: %q, want none: the sentinels let the broker in without their password", keys)
			case !tt.wantStore && !(strings.Contains(logs, refused) && strings.Contains(logs, "sentinels") && strings.Contains(logs, "NOAUTH")):
				t.Errorf("the logs do not say that the sentinels refused the broker (want %q, sentinels, NOAUTH):\n%s", refused, logs)
			}
			for _, pw := range []string{masterPassword, sentinelPassword} {
				if strings.Contains(logs, pw) {
					t.Fatalf("a Redis password appears in the logs:\n%s", logs)
				}
			}
		})
	}
}
