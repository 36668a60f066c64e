package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// TestKeyRotationUnderLoad: two broker processes (the built binary) serve a
// steady stream of cold users while `provision --rotate-key` registers a
// new key and the mounted key file changes. One broker is told to reload
// (SIGHUP) and signs with the new key while the other still signs with the
// old: the tenant accepts both. After `provision --finish` only the new key
// is accepted; the broker still on the old one is refused once, re-reads
// its key file and retries. No request fails.
func TestKeyRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	tn, err := qliktest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.Close)
	admin := tn.AddAdminClient()
	adminSecret := filepath.Join(dir, "admin-secret")
	if err := os.WriteFile(adminSecret, []byte(admin.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	const users = 4000
	ids := make([]string, users)
	for i := range ids {
		ids[i] = tn.AddUser(qliktest.User{Subject: fmt.Sprintf("user-%d", i), Name: "U"}).ID
	}

	registry, secret, mount := filepath.Join(dir, "tenants.yaml"), filepath.Join(dir, "secret.yaml"), filepath.Join(dir, "mount")
	if err := os.Mkdir(mount, 0o700); err != nil {
		t.Fatal(err)
	}
	provision := func(extra ...string) {
		t.Helper()
		var out, errb bytes.Buffer
		args := append([]string{"provision", "--tenant-id", "acme", "--auth", "private-key-jwt", "--secret-mount-dir", mount,
			"--registry-out", registry, "--secret-out", secret}, extra...)
		if err := run(context.Background(), args, envFunc(map[string]string{
			"QTB_TENANT_URL": tn.URL(), "QTB_ADMIN_CLIENT_ID": admin.ID, "QTB_ADMIN_CLIENT_SECRET_FILE": adminSecret,
		}), &out, &errb); err != nil {
			t.Fatalf("provision %v: %v\n%s%s", extra, err, out.String(), errb.String())
		}
		if strings.Contains(out.String()+errb.String(), "PRIVATE KEY") {
			t.Fatal("provision printed the private key")
		}
	}
	// project does what kubelet does with the Secret: the key file changes
	// at once (a rename), whole.
	project := func() *qlik.SigningKey {
		t.Helper()
		raw, err := os.ReadFile(secret)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			StringData map[string]string `json:"stringData"`
		}
		if err := yaml.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		pem := m.StringData["client-key.pem"]
		tmp := filepath.Join(mount, ".client-key.pem.tmp")
		if err := os.WriteFile(tmp, []byte(pem), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(mount, "client-key.pem")); err != nil {
			t.Fatal(err)
		}
		k, err := qlik.ParseSigningKey([]byte(pem), "", "")
		if err != nil {
			t.Fatal(err)
		}
		return k
	}

	provision()
	k1 := project()
	env := map[string]string{"QTB_TENANTS_FILE": registry, "QTB_SESSION_HMAC_SECRET": testHMAC}
	brokers := []*brokerProcess{startBroker(t, bin, env), startBroker(t, bin, env)}

	var (
		next, ok, failed atomic.Int64
		firstFailure     atomic.Value
		stop             = make(chan struct{})
		wg               sync.WaitGroup
	)
	for _, b := range brokers {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					// A cold user each time: every request is a token call.
					id := ids[int(next.Add(1))%users]
					s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": id, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(testHMAC))
					if err != nil {
						panic(err)
					}
					code, body := fetchToken("http://"+b.api, s)
					if code != 200 {
						failed.Add(1)
						firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %s", code, body))
						continue
					}
					ok.Add(1)
				}
			}()
		}
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	progress := func(what string) {
		t.Helper()
		from := ok.Load()
		waitFor(t, what, func() bool { return ok.Load() >= from+40 })
	}
	progress("traffic with the first key")
	if tn.AssertionKeyUses(k1.KeyID()) == 0 {
		t.Fatal("the brokers do not sign with the provisioned key")
	}

	// Rotate: the tenant holds both keys; the Secret and the mounted file
	// the new one. Broker 0 reloads now; broker 1 keeps the old key.
	provision("--rotate-key", "--key-alg", "ES384")
	k2 := project()
	if k2.Equal(k1) {
		t.Fatal("the rotation stored the old key")
	}
	if err := brokers[0].cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "broker 0 signing with the new key", func() bool { return tn.AssertionKeyUses(k2.KeyID()) > 0 })
	old := tn.AssertionKeyUses(k1.KeyID())
	waitFor(t, "broker 1 still signing with the old key", func() bool { return tn.AssertionKeyUses(k1.KeyID()) > old+10 })
	progress("traffic during the overlap")

	refusedBefore := len(tn.AssertionRefusals())
	provision("--finish")
	progress("traffic after --finish")
	progress("more traffic after --finish")
	oldAfter := tn.AssertionKeyUses(k1.KeyID())
	newAfter := tn.AssertionKeyUses(k2.KeyID())
	progress("traffic on the new key only")
	if n := tn.AssertionKeyUses(k1.KeyID()); n != oldAfter {
		t.Errorf("the old key was accepted %d times after --finish", n-oldAfter)
	}
	if tn.AssertionKeyUses(k2.KeyID()) <= newAfter {
		t.Error("the new key is not in use after --finish")
	}
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed during the rotation; first: %v\nbroker 1:\n%s", f, f+ok.Load(), firstFailure.Load(), brokers[1].stderr.String())
	}
	refused := tn.AssertionRefusals()[refusedBefore:]
	for _, r := range refused {
		if r != qliktest.RefusedKey {
			t.Errorf("refusal %q, want only the old key's", r)
		}
	}
	t.Logf("%d requests, none failed; %d assertions with the old key after --finish refused and retried with the new", ok.Load(), len(refused))
}
