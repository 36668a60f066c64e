package helm_test

import (
	"slices"
	"testing"
)

// TestRedisTopologies: standalone, Cluster and Sentinel reach the broker's
// QTB_REDIS_* variables, a private CA arrives as a file, and the
// NetworkPolicy opens every Redis port the broker was given.
func TestRedisTopologies(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args    []string
		env     map[string]string // "" means unset
		ports   []string          // Redis egress ports
		secrets map[string]string // *_FILE variable -> "Secret/key" its file projects
	}{
		"standalone": {
			[]string{"--set", "redis.url=redis://redis.redis.svc"},
			map[string]string{"QTB_REDIS_URL": "redis://redis.redis.svc", "QTB_REDIS_MODE": "standalone", "QTB_REDIS_ADDRS": "", "QTB_REDIS_CA_FILE": ""},
			[]string{"6379"},
			nil,
		},
		"cluster, seed nodes only": {
			[]string{"--set", "redis.mode=cluster", "--set", "redis.addrs={redis-0.redis:7000,redis-1.redis:7001}"},
			map[string]string{"QTB_REDIS_URL": "", "QTB_REDIS_MODE": "cluster", "QTB_REDIS_ADDRS": "redis-0.redis:7000,redis-1.redis:7001"},
			[]string{"7000", "7001"},
			nil,
		},
		"cluster, seeds in the url": {
			[]string{"--set", "redis.mode=cluster", "--set", "redis.url=redis://redis-0.redis:7000?addr=redis-1.redis:7001&addr=redis-2.redis:7002"},
			map[string]string{"QTB_REDIS_MODE": "cluster", "QTB_REDIS_ADDRS": ""},
			[]string{"7000", "7001", "7002"},
			nil,
		},
		"sentinel, CA from a Secret": {
			[]string{"--set", "redis.mode=sentinel", "--set", "redis.url=rediss://sentinel.redis:26379?master_name=tokens",
				"--set", "redis.ca.existingSecret=redis-ca", "--set", "redis.existingSecret=redis-auth"},
			map[string]string{"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_MASTER_NAME": "",
				"QTB_REDIS_CA_FILE":                "/var/run/secrets/qlik-token-broker/redis-ca/ca.pem",
				"QTB_REDIS_SENTINEL_USERNAME":      "",
				"QTB_REDIS_SENTINEL_PASSWORD_FILE": ""},
			[]string{"26379", "6379"},
			map[string]string{"QTB_REDIS_PASSWORD_FILE": "redis-auth/redis-password", "QTB_REDIS_CA_FILE": "redis-ca/ca.crt"},
		},
		"sentinel with a password of its own": {
			[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs={sentinel-0.redis:26379,sentinel-1.redis:26379}", "--set", "redis.masterName=tokens",
				"--set", "redis.existingSecret=redis-auth", "--set", "redis.sentinelUsername=qtb",
				"--set", "redis.sentinelPassword.existingSecret=redis-auth", "--set", "redis.sentinelPassword.key=sentinel-password"},
			map[string]string{"QTB_REDIS_MODE": "sentinel", "QTB_REDIS_SENTINEL_USERNAME": "qtb",
				"QTB_REDIS_PASSWORD_FILE":          "/var/run/secrets/qlik-token-broker/redis/password",
				"QTB_REDIS_SENTINEL_PASSWORD_FILE": "/var/run/secrets/qlik-token-broker/redis-sentinel/password"},
			[]string{"26379", "6379"},
			// One Secret may hold both passwords, under two keys.
			map[string]string{"QTB_REDIS_PASSWORD_FILE": "redis-auth/redis-password", "QTB_REDIS_SENTINEL_PASSWORD_FILE": "redis-auth/sentinel-password"},
		},
		"ports overridden": {
			[]string{"--set", "redis.mode=sentinel", "--set", "redis.addrs={sentinel.redis:26379}", "--set", "redis.masterName=tokens",
				"--set", "networkPolicy.redisPorts={26379,6380}"},
			map[string]string{"QTB_REDIS_MASTER_NAME": "tokens", "QTB_REDIS_ADDRS": "sentinel.redis:26379"},
			[]string{"26379", "6380"},
			nil,
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := render(t, append(slices.Clone(minimal), append([]string{"--set", "networkPolicy.enabled=true"}, tc.args...)...)...)
			spec := m.deployment(t).Spec.Template.Spec
			c := spec.Containers[0]
			checkContainer(t, c, spec.Volumes, "api")
			vars := env(c)
			for k, want := range tc.env {
				got, ok := vars[k]
				if want == "" && ok {
					t.Errorf("%s=%q, want it unset", k, got)
				} else if want != "" && got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			var ports []string
			for _, r := range m.netpols[0].Spec.Egress {
				for _, p := range r.Ports {
					if p := p.Port.String(); p != "53" && p != "443" {
						ports = append(ports, p)
					}
				}
			}
			if !slices.Equal(ports, tc.ports) {
				t.Errorf("Redis egress ports %v, want %v", ports, tc.ports)
			}
			for k, want := range tc.secrets {
				if got := projectedFrom(c, spec.Volumes, vars[k]); got != want {
					t.Errorf("%s=%s reads %q, want %s", k, vars[k], got, want)
				}
			}
		})
	}
}
