package helm_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
)

// pendingSettings are variables the chart already sets for broker features
// still being built; anything else the chart sets must be in settings().
var pendingSettings []string

// TestEverySettingReachable: each variable `serve` reads (internal/config's
// Settings()) can be set from values; a secret only as its *_FILE form.
func TestEverySettingReachable(t *testing.T) {
	t.Parallel()
	settings := serveSettings(t)
	if len(settings) < 20 {
		t.Fatalf("found only %d settings in config.Settings(): %v", len(settings), settings)
	}
	isSetting := map[string]bool{}
	for _, s := range settings {
		isSetting[s] = true
	}
	set := map[string]bool{}
	for _, args := range [][]string{
		{"-f", allOptions},
		{"-f", allOptions, "--set", "secrets.sessionHmacSecret.existingSecret=", "--set", "config.session.jwksUrl=https://app.example.com/jwks.json",
			"--set", "secrets.serviceHmacSecret.existingSecret=", "--set", "secrets.servicePublicKey.existingSecret=service-key"},
		append([]string{"-f", allOptions, "--set", "secrets.sessionHmacSecret.existingSecret=", "--set", "secrets.sessionPublicKey.existingSecret=session-key",
			"--set", "secrets.serviceHmacSecret.existingSecret=", "--set", "config.service.jwksUrl=https://jobs.example.com/jwks.json",
			"--set", "config.groupsClaim=groups"}, singleTenant...),
		append(append([]string{"-f", allOptions}, singleTenant...), keyedSingleTenant...),
	} {
		c := render(t, args...).deployment(t).Spec.Template.Spec.Containers[0]
		for _, e := range c.Env {
			if !strings.HasPrefix(e.Name, "QTB_") {
				continue
			}
			set[e.Name] = true
			if !isSetting[e.Name] && !slices.Contains(pendingSettings, e.Name) {
				t.Errorf("the chart sets %s, which the broker does not read (a typo?)", e.Name)
			}
		}
	}
	for _, s := range settings {
		switch {
		case isSetting[s+"_FILE"]:
			if set[s] {
				t.Errorf("%s is set as a literal: secrets must come as %s_FILE", s, s)
			}
			if !set[s+"_FILE"] {
				t.Errorf("%s_FILE cannot be set from values", s)
			}
		case !set[s]:
			t.Errorf("%s cannot be set from values", s)
		}
	}
	for _, p := range pendingSettings {
		if isSetting[p] {
			t.Logf("%s now exists in config.Settings(); drop it from pendingSettings", p)
		}
	}
}

// serveSettings lists the variables `serve` reads, from internal/config's
// settings table. It is the one place the chart tests learn the broker's
// settings.
func serveSettings(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, s := range config.Settings() {
		names = append(names, s.Env)
	}
	return names
}
