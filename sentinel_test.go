package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
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

// TestRedisSentinelCredentials: the sentinels' user and password are read
// from the environment, a flag or a *_FILE, reach cache.RedisOptions, and
// are refused, naming the variable, where they would mean nothing.
func TestRedisSentinelCredentials(t *testing.T) {
	const password = "sentinel-pw-NEVER-PRINTED"
	file := writeSecretFile(t, "sentinel-password", password)
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sentinelMode := map[string]string{
		"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_ADDRS": "127.0.0.1:26379,127.0.0.1:26380", "QTB_REDIS_MASTER_NAME": "tokens",
	}
	for _, tt := range []struct {
		name         string
		env          map[string]string
		args         []string
		wantUser     string
		wantPassword string
		wantErr      []string // each must appear; nil: valid
	}{
		{name: "password from the environment", env: with(sentinelMode, "QTB_REDIS_SENTINEL_PASSWORD", password), wantPassword: password},
		{name: "password from a file", env: with(sentinelMode, "QTB_REDIS_SENTINEL_PASSWORD_FILE", file), wantPassword: password},
		{
			name:     "user and password",
			env:      with(sentinelMode, "QTB_REDIS_SENTINEL_USERNAME", "qtb", "QTB_REDIS_SENTINEL_PASSWORD_FILE", file),
			wantUser: "qtb", wantPassword: password,
		},
		{
			name: "flags", env: sentinelMode,
			args:     []string{"--redis-sentinel-username", "qtb", "--redis-sentinel-password-file", file},
			wantUser: "qtb", wantPassword: password,
		},
		{
			name: "sentinels in the URL", env: map[string]string{
				"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_URL": "redis://s1:26379?master_name=tokens", "QTB_REDIS_SENTINEL_PASSWORD": password,
			},
			wantPassword: password,
		},
		{
			name:    "set twice",
			env:     with(sentinelMode, "QTB_REDIS_SENTINEL_PASSWORD", password, "QTB_REDIS_SENTINEL_PASSWORD_FILE", file),
			wantErr: []string{"QTB_REDIS_SENTINEL_PASSWORD and QTB_REDIS_SENTINEL_PASSWORD_FILE: set one, not both"},
		},
		{
			name:    "empty file",
			env:     with(sentinelMode, "QTB_REDIS_SENTINEL_PASSWORD_FILE", empty),
			wantErr: []string{"QTB_REDIS_SENTINEL_PASSWORD_FILE: secret file " + empty + " is empty"},
		},
		{
			name:    "standalone",
			env:     map[string]string{"QTB_REDIS_URL": "redis://redis:6379/0", "QTB_REDIS_SENTINEL_PASSWORD": password},
			wantErr: []string{`QTB_REDIS_SENTINEL_PASSWORD: authenticates to Redis Sentinels: set only with QTB_REDIS_MODE=sentinel, got "standalone"`},
		},
		{
			name: "cluster, from a file, with a user",
			env: map[string]string{
				"QTB_REDIS_MODE": "cluster", "QTB_REDIS_ADDRS": "n1:7000", "QTB_REDIS_SENTINEL_USERNAME": "qtb", "QTB_REDIS_SENTINEL_PASSWORD_FILE": file,
			},
			wantErr: []string{
				`QTB_REDIS_SENTINEL_USERNAME: authenticates to Redis Sentinels: set only with QTB_REDIS_MODE=sentinel, got "cluster"`,
				`QTB_REDIS_SENTINEL_PASSWORD_FILE: authenticates to Redis Sentinels: set only with QTB_REDIS_MODE=sentinel, got "cluster"`,
			},
		},
		{
			name:    "no Redis",
			env:     map[string]string{"QTB_REDIS_SENTINEL_PASSWORD": password},
			wantErr: []string{"QTB_REDIS_SENTINEL_PASSWORD: authenticates to Redis Sentinels: set only with QTB_REDIS_MODE=sentinel"},
		},
		{
			name:    "sentinel mode without sentinels",
			env:     map[string]string{"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_SENTINEL_PASSWORD": password},
			wantErr: []string{"QTB_REDIS_SENTINEL_PASSWORD: needs the sentinels, in QTB_REDIS_URL or QTB_REDIS_ADDRS"},
		},
		{
			name:    "user without a password",
			env:     with(sentinelMode, "QTB_REDIS_SENTINEL_USERNAME", "qtb"),
			wantErr: []string{"QTB_REDIS_SENTINEL_USERNAME: needs QTB_REDIS_SENTINEL_PASSWORD(_FILE)"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := with(tt.env,
				"QTB_TENANT_URL", "https://acme.eu.qlikcloud.com", "QTB_CLIENT_ID", "c", "QTB_CLIENT_SECRET", "client-secret",
				"QTB_SESSION_HMAC_SECRET", strings.Repeat("k", 32))
			cfg, err := loadConfig(defaultConfig(), "serve", tt.args, envFunc(env))
			if err != nil && strings.Contains(err.Error(), password) {
				t.Fatalf("the error quotes the password:\n%v", err)
			}
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("loadConfig accepted the configuration")
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error does not say %q:\n%v", want, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			o := cfg.redisOptions()
			if o.SentinelUsername != tt.wantUser || o.SentinelPassword != tt.wantPassword {
				t.Errorf("RedisOptions SentinelUsername %q, SentinelPassword set: %v; want %q, %v",
					o.SentinelUsername, o.SentinelPassword != "", tt.wantUser, tt.wantPassword != "")
			}
			if o.SentinelPassword != "" && o.SentinelPassword != tt.wantPassword {
				t.Error("RedisOptions.SentinelPassword is not the configured password (a trailing newline kept?)")
			}
		})
	}
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

// TestRedisSentinelPasswordNeverPrinted: however the configuration is
// dumped - fmt verbs, JSON, slog in either format, the flag listing - the
// sentinels' password, from the environment or a file, stays out.
func TestRedisSentinelPasswordNeverPrinted(t *testing.T) {
	const password = "sentinel-pw-NEVER-PRINTED"
	base := map[string]string{
		"QTB_TENANT_URL": "https://acme.eu.qlikcloud.com", "QTB_CLIENT_ID": "c", "QTB_CLIENT_SECRET": "client-secret",
		"QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32),
		"QTB_REDIS_MODE":          "sentinel", "QTB_REDIS_ADDRS": "127.0.0.1:26379", "QTB_REDIS_MASTER_NAME": "tokens",
	}
	for name, env := range map[string]map[string]string{
		"environment": with(base, "QTB_REDIS_SENTINEL_PASSWORD", password),
		"file":        with(base, "QTB_REDIS_SENTINEL_PASSWORD_FILE", writeSecretFile(t, "sentinel-password", password)),
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := loadConfig(defaultConfig(), "serve", nil, envFunc(env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.RedisSentinelPassword != password {
				t.Fatal("the password was not loaded, so this test would prove nothing")
			}
			var dumps bytes.Buffer
			fmt.Fprintf(&dumps, "%v\n%+v\n%#v\n%s\n", cfg, cfg, cfg, cfg.RedisSentinelPassword)
			raw, err := json.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			dumps.Write(raw)
			slog.New(slog.NewJSONHandler(&dumps, nil)).Info("config", "config", cfg, "password", cfg.RedisSentinelPassword)
			slog.New(slog.NewTextHandler(&dumps, nil)).Info("config", "config", cfg, "password", cfg.RedisSentinelPassword)
			printFlags(&dumps, "serve", cfg)
			if strings.Contains(dumps.String(), password) {
				t.Fatalf("the password appears in a dump of the configuration:\n%s", dumps.String())
			}
			if !strings.Contains(dumps.String(), "REDACTED") {
				t.Fatalf("no dump shows the redaction marker; were the dumps empty?\n%s", dumps.String())
			}
		})
	}
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
