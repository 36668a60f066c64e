package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfileBuild runs the Dockerfile's build-stage command as plain go
// build, with the flags read from the Dockerfile itself, and checks what
// the distroless runtime image needs: a static binary, stamped, under
// 40 MB, whose healthcheck subcommand fails with no broker running.
func TestDockerfileBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`go build -trimpath -ldflags "([^"]+)"`).FindSubmatch(raw)
	if m == nil || !strings.Contains(string(raw), "CGO_ENABLED=0") {
		t.Fatal("the Dockerfile's build stage no longer runs CGO_ENABLED=0 go build -trimpath -ldflags ...")
	}
	ldflags := strings.NewReplacer("${VERSION}", "1.2.3-test", "${REVISION}", "abc123").Replace(string(m[1]))
	bin := filepath.Join(t.TempDir(), "qlik-token-broker")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binary: %.1f MB", float64(st.Size())/(1<<20))
	if st.Size() > 40<<20 {
		t.Errorf("binary is %d bytes, over 40 MB", st.Size())
	}
	if out, err := exec.Command("file", bin).Output(); err == nil {
		if !strings.Contains(string(out), "statically linked") {
			t.Errorf("file says: %s", out)
		}
	}
	if out, _ := exec.Command("ldd", bin).CombinedOutput(); !strings.Contains(string(out), "not a dynamic executable") {
		t.Errorf("ldd says: %s", out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.Contains(string(out), "1.2.3-test (abc123)") {
		t.Errorf("version stamping: %q %v", out, err)
	}
	hc := exec.Command(bin, "healthcheck", "--url", "http://"+freeAddr(t)+"/healthz")
	if err := hc.Run(); err == nil {
		t.Error("healthcheck exited 0 with no broker listening")
	}
}
