package qliktest_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestQlikAPIJavaScriptClient runs node/provision.mjs, which drives the fake
// tenant with Qlik's own JavaScript client (@qlik/api, pinned in
// node/package-lock.json): admin client credentials, oauth-clients create,
// consent, patch, secrets, paged list, delete, users search, and an
// impersonation token. It proves the fake accepts @qlik/api's dialect, not
// just the one package qlik speaks.
func TestQlikAPIJavaScriptClient(t *testing.T) {
	js := newNodeScripts(t)
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	admin := tn.AddAdminClient()
	user := tn.AddUser(qliktest.User{Subject: "auth0|grace", Email: "grace@example.com", Name: "Grace"})
	const name = `broker "js" \ client`

	out := js.run(t, "provision.mjs",
		"QLIK_HOST="+tn.URL(),
		"QLIK_ADMIN_CLIENT_ID="+admin.ID,
		"QLIK_ADMIN_CLIENT_SECRET="+admin.Secret,
		"QLIK_USER_ID="+user.ID,
		"QLIK_CLIENT_NAME="+name,
		"QLIK_ORIGIN=https://app.example.com",
	)
	var got struct {
		QlikAPIVersion string `json:"qlikApiVersion"`
		AdminTokenJWT  bool   `json:"adminTokenIsJWT"`
		AdminUser      struct{ ID, Subject string }
		Created        struct {
			Status             int
			ClientID, OwnerID  string
			SecretShown        bool
			SecretHiddenOnGet  bool
			ConsentBefore      string
			PatchConsentStatus int
			ConsentAfter       string
			PatchStatus        int
			AllowedOrigins     []string
		}
		Secret struct {
			Status       int
			HasHint      bool
			DeleteStatus int
		}
		Listed              []string
		DeleteWithoutHeader struct {
			Status int
			Code   string
		}
		DeleteStatus  int
		User          []struct{ ID, Subject, Email string }
		Impersonation struct {
			AccessToken string
			Me          struct{ ID, Subject string }
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	t.Logf("@qlik/api %s", got.QlikAPIVersion)

	checks := []struct {
		what      string
		got, want any
	}{
		{"admin token is a JWT", got.AdminTokenJWT, true},
		{"admin /users/me subject", got.AdminUser.Subject, `qlikbot\` + admin.ID},
		{"create status", got.Created.Status, 201},
		{"secret shown on create", got.Created.SecretShown, true},
		{"secret hidden on get", got.Created.SecretHiddenOnGet, true},
		{"owner", got.Created.OwnerID, got.AdminUser.ID},
		{"consent before", got.Created.ConsentBefore, "required"},
		{"consent patch status", got.Created.PatchConsentStatus, 204},
		{"consent after", got.Created.ConsentAfter, "trusted"},
		{"client patch status", got.Created.PatchStatus, 204},
		{"origins after patch", got.Created.AllowedOrigins, []string{"https://app.example.com", "https://other.example.com"}},
		{"secret create status", got.Secret.Status, 201},
		{"secret has hint", got.Secret.HasHint, true},
		{"secret delete status", got.Secret.DeleteStatus, 204},
		{"listed across pages", got.Listed, []string{name, name + " scratch"}},
		{"delete without qlik-confirm-delete", got.DeleteWithoutHeader.Status, 400},
		{"delete status", got.DeleteStatus, 204},
		{"user found", len(got.User) == 1 && got.User[0].ID == user.ID && got.User[0].Email == user.Email, true},
		{"/users/me as the user", got.Impersonation.Me.ID, user.ID},
	}
	for _, c := range checks {
		gj, _ := json.Marshal(c.got)
		wj, _ := json.Marshal(c.want)
		if string(gj) != string(wj) {
			t.Errorf("%s: got %s, want %s", c.what, gj, wj)
		}
	}

	// What the script made is in the tenant, as it asked for it.
	oc, ok := tn.OAuthClientByName(name)
	if !ok {
		t.Fatalf("client %q not in the tenant", name)
	}
	if oc.ID != got.Created.ClientID || oc.ConsentMethod != "trusted" || oc.AppType != "web" ||
		!slices.Equal(oc.AllowedGrants, []string{"client_credentials", "urn:qlik:oauth:user-impersonation"}) ||
		!slices.Equal(oc.AllowedScopes, []string{"user_default"}) || oc.OwnerID != got.AdminUser.ID {
		t.Errorf("stored client %+v", oc)
	}
	if _, ok := tn.OAuthClientByName(name + " scratch"); ok {
		t.Error("scratch client still exists")
	}
	u, err := tn.TokenUser(got.Impersonation.AccessToken)
	if err != nil || u.ID != user.ID {
		t.Errorf("minted token acts for %+v (%v), want %s", u, err, user.ID)
	}
	// Two creates, consent, patch, secret create and delete, two deletes.
	if n := tn.WriteCalls(); n != 8 {
		t.Errorf("WriteCalls = %d, want 8", n)
	}
	// @qlik/api reads product-info.json to tell Qlik Cloud from Windows
	// before its first REST call, and keeps a 200 for the process.
	if n := tn.Calls(qliktest.EndpointProductInfo); n != 1 {
		t.Errorf("product-info.json fetched %d times, want 1", n)
	}
}

// lookNode finds node (>= 20, what @qlik/api requires) and npm, or skips.
func lookNode(t *testing.T) (node, npm string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH: cannot run @qlik/api")
	}
	npm, err = exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not on PATH: cannot install @qlik/api")
	}
	v, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Skipf("node --version: %v", err)
	}
	m := regexp.MustCompile(`^v(\d+)\.`).FindSubmatch(v)
	if m == nil {
		t.Skipf("node --version printed %q", v)
	}
	if major, _ := strconv.Atoi(string(m[1])); major < 20 {
		t.Skipf("node %s is older than 20, which @qlik/api requires", v)
	}
	return node, npm
}

// nodeScripts runs the scripts in node/ with the packages its lockfile
// pins, installed once per test by npm ci.
type nodeScripts struct {
	ctx  context.Context
	node string
	dir  string
}

// newNodeScripts installs node/'s packages (npm ci reinstalls exactly the
// lockfile; --prefer-offline makes a warm npm cache enough), or skips the
// test with -short.
func newNodeScripts(t *testing.T) *nodeScripts {
	t.Helper()
	if testing.Short() {
		t.Skip("runs npm and node; skipped with -short")
	}
	node, npm := lookNode(t)
	dir, err := filepath.Abs("node")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	t.Cleanup(cancel)
	install := exec.CommandContext(ctx, npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	return &nodeScripts{ctx: ctx, node: node, dir: dir}
}

// run runs script with env added to the environment and returns its
// standard output; a failure shows its standard error.
func (js *nodeScripts) run(t *testing.T, script string, env ...string) []byte {
	t.Helper()
	run := exec.CommandContext(js.ctx, js.node, script)
	run.Dir = js.dir
	run.Env = append(os.Environ(), env...)
	var stderr stringWriter
	run.Stderr = &stderr
	out, err := run.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, stderr.s)
	}
	return out
}

type stringWriter struct{ s string }

func (w *stringWriter) Write(p []byte) (int, error) { w.s += string(p); return len(p), nil }
