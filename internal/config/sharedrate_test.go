package config

import (
	"maps"
	"strings"
	"testing"
)

// TestUpstreamSharedRateSettings: the shared upstream rate limit's settings
// reach the broker's configuration, and each problem with them is named.
func TestUpstreamSharedRateSettings(t *testing.T) {
	base := map[string]string{
		"QTB_TENANT_URL": "https://acme.eu.qlikcloud.com", "QTB_CLIENT_ID": "c", "QTB_CLIENT_SECRET": "client-secret",
		"QTB_SESSION_HMAC_SECRET": strings.Repeat("k", 32),
	}
	withRedis := func(kv ...string) map[string]string {
		env := maps.Clone(base)
		env["QTB_REDIS_URL"] = "redis://redis:6379/0"
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	for _, tt := range []struct {
		name      string
		env       map[string]string
		args      []string
		wantRate  float64
		wantBurst int
		wantErr   []string // each must appear; nil: valid
	}{
		{name: "off by default", env: base, wantRate: 0, wantBurst: 5},
		{name: "on, default burst", env: withRedis("QTB_UPSTREAM_SHARED_RATE", "90"), wantRate: 90, wantBurst: 5},
		{
			name: "rate and burst", env: withRedis("QTB_UPSTREAM_SHARED_RATE", "7.5", "QTB_UPSTREAM_SHARED_BURST", "2"),
			wantRate: 7.5, wantBurst: 2,
		},
		{
			name: "flags", env: withRedis(), args: []string{"--upstream-shared-rate", "60", "--upstream-shared-burst", "10"},
			wantRate: 60, wantBurst: 10,
		},
		{
			name:    "without Redis",
			env:     map[string]string{"QTB_UPSTREAM_SHARED_RATE": "90"},
			wantErr: []string{"QTB_UPSTREAM_SHARED_RATE: is counted in Redis: needs QTB_REDIS_URL"},
		},
		{
			name: "negative",
			env:  withRedis("QTB_UPSTREAM_SHARED_RATE", "-1", "QTB_UPSTREAM_SHARED_BURST", "-1"),
			wantErr: []string{
				"QTB_UPSTREAM_SHARED_RATE: must not be negative",
				"QTB_UPSTREAM_SHARED_BURST: must be between 1 and 1000, got -1",
			},
		},
		{
			name:    "zero burst",
			env:     withRedis("QTB_UPSTREAM_SHARED_RATE", "90", "QTB_UPSTREAM_SHARED_BURST", "0"),
			wantErr: []string{"QTB_UPSTREAM_SHARED_BURST: must be between 1 and 1000, got 0"},
		},
		{
			name:    "infinite",
			env:     withRedis("QTB_UPSTREAM_SHARED_RATE", "+Inf"),
			wantErr: []string{"QTB_UPSTREAM_SHARED_RATE: must be 0 (off) or between 0.01 and 1000000 calls a minute"},
		},
		{
			name:    "not a number",
			env:     withRedis("QTB_UPSTREAM_SHARED_RATE", "ninety"),
			wantErr: []string{"QTB_UPSTREAM_SHARED_RATE"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := maps.Clone(tt.env)
			for k, v := range base {
				if _, set := env[k]; !set {
					env[k] = v
				}
			}
			cfg, err := Load(tt.args, envFunc(env))
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("accepted")
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error does not say %q:\n%v", want, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			up := cfg.UpstreamConfig()
			if up.SharedRatePerMinute != tt.wantRate || up.SharedBurst != tt.wantBurst {
				t.Errorf("SharedRatePerMinute, SharedBurst = %v, %d; want %v, %d", up.SharedRatePerMinute, up.SharedBurst, tt.wantRate, tt.wantBurst)
			}
		})
	}
}
