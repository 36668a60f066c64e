package config

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Secret holds a credential. It never prints, logs or marshals its value:
// convert it to a string only where the credential is used.
type Secret string

// String returns REDACTED, or "" for an unset secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "REDACTED"
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// LogValue keeps slog from printing the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON keeps encoders from printing the value.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// ReadSecretFile reads a secret mounted as a file, without its final
// newline. An empty file is an error: it would pass for an unset secret.
func ReadSecretFile(path string) (Secret, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	v := strings.TrimRight(string(raw), "\r\n")
	if v == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return Secret(v), nil
}
