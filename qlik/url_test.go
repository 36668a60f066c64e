package qlik_test

import (
	"strings"
	"testing"

	"github.com/qtb-dev/qlik-token-broker/qlik"
)

func TestNewValidatesTenantURL(t *testing.T) {
	tests := []struct {
		url     string
		base    string // "" means New must fail
		errPart string
	}{
		{"https://tenant.eu.qlikcloud.com", "https://tenant.eu.qlikcloud.com", ""},
		{"https://tenant.eu.qlikcloud.com/", "https://tenant.eu.qlikcloud.com", ""},
		{"HTTPS://tenant.example.com:8443", "https://tenant.example.com:8443", ""},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080", ""},
		{"http://127.1.2.3", "http://127.1.2.3", ""},
		{"http://[::1]:9000/", "http://[::1]:9000", ""},
		{"http://localhost:9000", "http://localhost:9000", ""},
		{"http://LocalHost", "http://LocalHost", ""},

		{"http://tenant.example.com", "", "https"},
		{"http://10.0.0.1", "", "https"},
		{"http://localhost.evil.com", "", "https"},
		{"http://127.0.0.1.nip.io", "", "https"},
		{"ftp://tenant.example.com", "", "scheme"},
		{"tenant.example.com", "", "absolute"},
		{"//tenant.example.com", "", "absolute"},
		{"", "", "absolute"},
		{"https://", "", "host"},
		{"https:tenant", "", "host"},
		{"https://user:hunter2@tenant.example.com", "", "userinfo"},
		{"https://tenant.example.com?x=1", "", "query"},
		{"https://tenant.example.com/?", "", "query"},
		{"https://tenant.example.com#frag", "", "fragment"},
		{"https://tenant.example.com/#", "", "fragment"},
		{"https://tenant.example.com/api", "", "path"},
		{"https://tenant.example.com//", "", "path"},
		{"https://tenant.example.com:port", "", "invalid"},
		{"https://ten ant.example.com", "", "invalid"},
		{"https://user:hunter2@ten ant.example.com", "", "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			c, err := qlik.New(tt.url, qlik.Options{})
			if tt.base != "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.BaseURL() != tt.base {
					t.Errorf("BaseURL %q, want %q", c.BaseURL(), tt.base)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, BaseURL %q", c.BaseURL())
			}
			if !strings.Contains(err.Error(), tt.errPart) {
				t.Errorf("error %q does not mention %q", err, tt.errPart)
			}
			if !strings.HasPrefix(err.Error(), "qlik: ") {
				t.Errorf("error %q lacks the qlik: prefix", err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q leaks the password", err)
			}
		})
	}
}
