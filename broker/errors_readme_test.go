package broker

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
	"github.com/qtb-dev/qlik-token-broker/session"
)

// everyError is one error of each kind classify tells apart. When classify
// learns a new answer, add an error that produces it here (the test below
// fails until then, naming the code).
func everyError() []error {
	qe := func(status int) error {
		return fmt.Errorf("%w: %w", ErrUpstream, &qlik.Error{Endpoint: "token", StatusCode: status})
	}
	errs := []error{
		&userRateLimitedError{retryAfter: 1},
		&UnavailableError{Cause: CauseCooldown}, &UnavailableError{Cause: CauseBreakerOpen},
		&UnavailableError{Cause: CauseQueueTimeout}, &UnavailableError{Cause: CauseSharedRate},
		errPathNotAllowed, errWebsocketOff, errServiceScope, errBadRequest,
		ErrUnknownTenant, ErrUnknownUser, ErrInvalidClient,
		&session.Error{Reason: session.ReasonExpired},
		fmt.Errorf("%w: %w", errServiceCredential, &session.Error{Reason: session.ReasonExpired}),
		errOriginNotAllowed, errLoggedOut, errLogoutIncomplete, errRefusedAgain, errGroupsSync,
		qe(400), qe(401), qe(403), qe(429), qe(500),
		qlik.ErrMalformedResponse, ErrTokenTooShortLived,
		context.DeadlineExceeded, context.Canceled,
		ErrFetchPanicked, ErrUpstream, errors.New("anything else"),
	}
	for _, s := range []int{400, 401, 404, 405, 413, 502, 504} {
		errs = append(errs, echo.NewHTTPError(s))
	}
	return errs
}

// answersInSource lists every error code literal errors.go gives an
// answer: `code: "..."` fields, `ae.code, ... = "..."` assignments and the
// values of classifyEcho's map.
func answersInSource(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var codes []string
	lit := func(e ast.Expr) {
		if b, ok := e.(*ast.BasicLit); ok && b.Kind == token.STRING {
			if s, err := strconv.Unquote(b.Value); err == nil && s != "error" {
				codes = append(codes, s)
			}
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.KeyValueExpr:
			if id, ok := n.Key.(*ast.Ident); ok && id.Name == "code" {
				lit(n.Value)
			}
		case *ast.AssignStmt:
			for i, l := range n.Lhs {
				if sel, ok := l.(*ast.SelectorExpr); ok && sel.Sel.Name == "code" && i < len(n.Rhs) {
					lit(n.Rhs[i])
				}
			}
		case *ast.FuncDecl:
			if n.Name.Name == "classifyEcho" {
				ast.Inspect(n, func(m ast.Node) bool {
					if kv, ok := m.(*ast.KeyValueExpr); ok {
						if _, ok := kv.Key.(*ast.SelectorExpr); ok {
							lit(kv.Value)
						}
					}
					return true
				})
			}
		}
		return true
	})
	return codes
}

type answer struct {
	status int
	code   string
}

// readmeErrors parses the README's errors table into (status, code) rows.
func readmeErrors(t *testing.T) map[answer]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "| status | `error` | when |")
	if !ok {
		t.Fatal("README has no errors table (| status | `error` | when |)")
	}
	rows := map[answer]bool{}
	statusRE, codeRE := regexp.MustCompile(`\b[1-5]\d\d\b`), regexp.MustCompile("`([a-z_]+)`")
	for line := range strings.SplitSeq(rest, "\n") {
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break
			}
			continue
		}
		cols := strings.Split(line, "|")
		if len(cols) < 4 || strings.HasPrefix(strings.TrimSpace(cols[1]), "---") {
			continue
		}
		var statuses []int
		for _, s := range statusRE.FindAllString(cols[1], -1) {
			n, _ := strconv.Atoi(s)
			statuses = append(statuses, n)
		}
		var codes []string
		for _, m := range codeRE.FindAllStringSubmatch(cols[2], -1) {
			codes = append(codes, m[1])
		}
		for i, c := range codes {
			s := statuses[0]
			if len(statuses) == len(codes) {
				s = statuses[i]
			}
			rows[answer{s, c}] = true
		}
	}
	return rows
}

// TestReadmeErrorsTable: the README's errors table lists exactly the
// (status, code) answers classify gives, and classify gives no code the
// test cannot produce. A failure names the row to add or remove.
func TestReadmeErrorsTable(t *testing.T) {
	given := map[answer]bool{}
	for _, err := range everyError() {
		ae := classify(err)
		given[answer{ae.status, ae.code}] = true
	}
	for _, ae := range earlyRefusals { // net/http's own, through Listener
		given[answer{ae.status, ae.code}] = true
	}
	codes := map[string]bool{}
	for a := range given {
		codes[a.code] = true
	}
	for _, c := range answersInSource(t) {
		if !codes[c] {
			t.Errorf("classify can answer %q, but no error in everyError produces it: add one, and the README row", c)
		}
	}
	doc := readmeErrors(t)
	for a := range given {
		if !doc[a] {
			t.Errorf("README errors table lacks the row | %d | `%s` |", a.status, a.code)
		}
	}
	for a := range doc {
		if !given[a] {
			t.Errorf("README errors table has the row | %d | `%s` |, which classify never answers", a.status, a.code)
		}
	}
	if len(doc) < 15 {
		t.Errorf("read only %d rows from the README's errors table", len(doc))
	}
}

// TestRedisOpsAreDocumented: every op the broker counts in
// redis_errors_total is one metrics.LabelValues lists (and so one the
// README's metrics table documents, by metrics' own test).
func TestRedisOpsAreDocumented(t *testing.T) {
	ops := metrics.LabelValues()["redis_errors_total"]["op"]
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			var fn string
			switch f := call.Fun.(type) {
			case *ast.Ident:
				fn = f.Name
			case *ast.SelectorExpr:
				fn = f.Sel.Name
			}
			arg := map[string]int{"redisError": 1, "countRedisError": 2}
			i, ok := arg[fn]
			if !ok || len(call.Args) <= i {
				return true
			}
			if _, ok := call.Args[i].(*ast.Ident); ok {
				return true // redisError passing its own op on
			}
			b, ok := call.Args[i].(*ast.BasicLit)
			if !ok {
				t.Errorf("%s: %s's op is not a string literal; this test cannot check it", name, fn)
				return true
			}
			op, _ := strconv.Unquote(b.Value)
			found++
			if !slices.Contains(ops, op) {
				t.Errorf("%s counts redis_errors_total{op=%q}: add it to metrics.LabelValues and the README's metrics table", name, op)
			}
			return true
		})
	}
	if found < 5 {
		t.Errorf("found only %d counted Redis operations", found)
	}
}
