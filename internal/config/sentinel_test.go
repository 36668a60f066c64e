package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
			cfg, err := Load(tt.args, envFunc(env))
			if err != nil && strings.Contains(err.Error(), password) {
				t.Fatalf("the error quotes the password:\n%v", err)
			}
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("Load accepted the configuration")
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error does not say %q:\n%v", want, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			o := cfg.RedisOptions()
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
			cfg, err := Load(nil, envFunc(env))
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
			PrintFlags(&dumps, "serve", cfg)
			if strings.Contains(dumps.String(), password) {
				t.Fatalf("the password appears in a dump of the configuration:\n%s", dumps.String())
			}
			if !strings.Contains(dumps.String(), "REDACTED") {
				t.Fatalf("no dump shows the redaction marker; were the dumps empty?\n%s", dumps.String())
			}
		})
	}
}
