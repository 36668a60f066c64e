package admin

import (
	"context"
	"fmt"
	"io"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// envFunc turns a map into a getenv.
func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// run runs an admin command as the program does: args start with its name.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	switch args[0] {
	case "clients":
		return Clients(ctx, args[1:], getenv, stdout, stderr)
	case "provision":
		return Provision(ctx, args[1:], getenv, stdout)
	case "groups":
		return Groups(ctx, args[1:], getenv, stdout, stderr)
	}
	return fmt.Errorf("unknown command %q", args[0])
}
