package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qtb-dev/qlik-token-broker/qlik/qliktest"
)

// docCommand is one broker command line of a document's sh block.
type docCommand struct {
	doc  string
	line int
	text string   // as written (continuations joined)
	args []string // the broker's arguments: what follows the binary, `go run .` or the image
}

var (
	imageWord  = regexp.MustCompile(`^[\w.-]+(/[\w.-]+)*/qlik-token-broker(:[\w.-]+)?(@sha256:\w+)?$`)
	tenantURLs = regexp.MustCompile(`https://[a-z0-9-]+\.[a-z0-9-]+\.qlikcloud\.com`)
)

// docCommands reads the broker command lines of the README and
// docs/deploy.md: `qlik-token-broker ...`, `go run . ...` and
// `docker run ... <image> ...` lines of sh blocks.
func docCommands(t *testing.T) []docCommand {
	t.Helper()
	var out []docCommand
	for _, doc := range []string{"README.md", "docs/deploy.md"} {
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		in, cur, start := false, "", 0
		sc := bufio.NewScanner(bytes.NewReader(raw))
		for n := 1; sc.Scan(); n++ {
			l := sc.Text()
			switch {
			case !in && (l == "```sh" || l == "```bash"):
				in = true
				continue
			case in && l == "```":
				in = false
				continue
			case !in:
				continue
			}
			if cur == "" {
				start = n
			}
			if c, ok := strings.CutSuffix(l, `\`); ok {
				cur += c
				continue
			}
			text := strings.TrimSpace(cur + l)
			cur = ""
			if i := strings.Index(text, " #"); i >= 0 {
				text = strings.TrimSpace(text[:i])
			}
			words := strings.Fields(text)
			var args []string
			switch {
			case len(words) == 0:
				continue
			case words[0] == "qlik-token-broker":
				args = words[1:]
			case len(words) > 2 && words[0] == "go" && words[1] == "run" && words[2] == ".":
				args = words[3:]
			case len(words) > 1 && words[0] == "docker" && words[1] == "run":
				for i, w := range words {
					if imageWord.MatchString(w) {
						args = append([]string{}, words[i+1:]...)
						if len(args) == 0 {
							args = []string{"serve"} // the image's CMD
						}
					}
				}
				if args == nil {
					continue
				}
			default:
				continue
			}
			out = append(out, docCommand{doc: doc, line: start, text: text, args: args})
		}
	}
	return out
}

// TestDocBrokerCommands runs every broker command the README and
// docs/deploy.md show, as written, against a fake tenant: tenant URLs are
// the fake tenant's, <id> a client of it, <hint> that client's secret
// hint, `a|b` the first choice; `docker run IMAGE args` runs the binary
// with args. Commands that need what a test cannot give (a configured
// `serve`, files a reader made earlier) are named and skipped, so a new
// command in the docs is run or consciously skipped. Each document is a
// reader's walk-through of its own, run in order against a tenant and a
// working directory of its own: the README onboards acme with a secret,
// docs/deploy.md registers it with a key (switching an existing client is
// `--fix`, which TestProvisionSwitchSecretToKeyAndBack runs).
func TestDocBrokerCommands(t *testing.T) {
	healthy := startInProc(t, inProcOptions{})
	// readerState is one document's reader: a tenant, a working
	// directory and an environment.
	type readerState struct {
		tn  *qliktest.Tenant
		dir string
		env map[string]string
	}
	var (
		tn      *qliktest.Tenant
		dir     string
		env     map[string]string
		readers = map[string]readerState{}
	)
	// reader makes doc's reader the current one, starting it on first use.
	reader := func(doc string) {
		r, ok := readers[doc]
		if !ok {
			ftn, err := qliktest.New()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(ftn.Close)
			admin := ftn.AddAdminClient()
			r = readerState{tn: ftn, dir: t.TempDir()}
			if err := os.WriteFile(filepath.Join(r.dir, "admin-secret"), []byte(admin.Secret), 0o600); err != nil {
				t.Fatal(err)
			}
			r.env = map[string]string{
				"QTB_TENANT_URL": ftn.URL(), "QTB_ADMIN_CLIENT_ID": admin.ID, "QTB_ADMIN_CLIENT_SECRET": admin.Secret,
				"ADMIN_ID": admin.ID, "QTB_LISTEN": hostPort(healthy.api),
			}
			readers[doc] = r
		}
		tn, dir, env = r.tn, r.dir, r.env
	}
	ran := map[string]bool{}
	for _, c := range docCommands(t) {
		reader(c.doc)
		where := c.doc + ":" + itoa(c.line) + ": " + c.text
		switch {
		case c.args[0] == "serve" && len(c.args) == 1:
			t.Logf("skipped (needs a configuration; the serve tests run it): %s", where)
			continue
		case c.args[0] == "provision" && strings.Contains(c.text, "$(cat "):
			t.Logf("skipped (reads files an earlier step made; TestProvisionedTenantServes runs provision): %s", where)
			continue
		}
		client := tn.AddClient(qliktest.OAuthClient{ID: "doc-" + itoa(c.line) + "-" + itoa(len(ran)), Secret: "doc-client-secret-" + itoa(c.line) + "xyzabc", Name: "doc"})
		var args []string
		for _, a := range c.args {
			a = tenantURLs.ReplaceAllString(a, tn.URL())
			a = strings.ReplaceAll(a, "<id>", client.ID)
			a = strings.ReplaceAll(a, "<hint>", client.Secret[len(client.Secret)-6:])
			a = os.Expand(a, func(k string) string { return env[k] })
			if first, _, ok := strings.Cut(a, "|"); ok && !strings.Contains(a, "/") {
				a = first
			}
			switch a {
			case "admin-secret", "tenants.yaml", "qtb-acme-secret.yaml":
				a = filepath.Join(dir, a)
			}
			args = append(args, a)
		}
		if args[0] == "demo" {
			runDemoBriefly(t, where, args)
			ran["demo"] = true
			continue
		}
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := run(ctx, args, envFunc(env), &out, &out)
		cancel()
		if err != nil {
			t.Errorf("%s\n  ran %q: %v\n%s", where, args, err, out.String())
			continue
		}
		ran[strings.Join(args[:min(2, len(args))], " ")] = true
		t.Logf("ran %q", args)
	}
	// The README names `healthcheck` (the image's HEALTHCHECK) in prose: it
	// passes against a running broker, and fails where none answers.
	if err := run(context.Background(), []string{"healthcheck"}, envFunc(env), &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Errorf("healthcheck against a running broker: %v", err)
	}
	if err := run(context.Background(), []string{"healthcheck"}, envFunc(map[string]string{"QTB_LISTEN": freeAddr(t)}), &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Error("healthcheck passed where no broker listens")
	}
	for _, want := range []string{"demo", "version", "serve -h", "clients list", "provision --tenant-url"} {
		if !ran[want] {
			t.Errorf("no `%s` ran (ran %v): did the documents or this test's reading of them change?", want, ran)
		}
	}
}

// runDemoBriefly starts demo as a reader would and waits until it serves.
func runDemoBriefly(t *testing.T, where string, args []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up := make(chan struct{})
	ctx = context.WithValue(ctx, listenHookKey{}, listenHook(func(net.Addr, net.Addr) { close(up) }))
	var out syncBuffer
	done := make(chan error, 1)
	// demo listens on 127.0.0.1:8080 by default; QTB_LISTEN moves it, as
	// for a reader whose 8080 is taken.
	go func() {
		done <- run(ctx, args, envFunc(map[string]string{"QTB_LISTEN": freeAddr(t), "QTB_METRICS_LISTEN": freeAddr(t)}), &out, &out)
	}()
	select {
	case <-up:
	case err := <-done:
		t.Errorf("%s: exited: %v\n%s", where, err, out.String())
		return
	case <-time.After(20 * time.Second):
		t.Errorf("%s: did not start", where)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("%s: %v", where, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
