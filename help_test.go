package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestHelpExitsZero: asking a command for its flags is not a failure, for
// demo and healthcheck as for serve.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"serve", "-h"}, {"demo", "-h"}, {"healthcheck", "-h"}, {"help"}} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), args, envFunc(nil), &stdout, &stderr); err != nil {
			t.Errorf("%v: %v", args, err)
		}
		if out := stdout.String() + stderr.String(); !strings.Contains(out, "-") {
			t.Errorf("%v printed no flags:\n%s", args, out)
		}
	}
}
