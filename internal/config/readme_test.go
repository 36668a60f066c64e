package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestReadmeSettingsTable: the README's configuration table names every
// setting in its first column and no variable that is not one; where a
// row names one setting and one default, it is the setting's default. A
// failure names the row to add, remove or fix.
func TestReadmeSettingsTable(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "| variable | meaning | default |")
	if !ok {
		t.Fatal("README has no settings table (| variable | meaning | default |)")
	}
	settings := map[string]Setting{}
	for _, s := range Settings() {
		settings[s.Env] = s
	}
	documented := map[string]bool{}
	varRE := regexp.MustCompile("`(QTB_[A-Z0-9_]+)(\\(_FILE\\))?`")
	defRE := regexp.MustCompile("^`([^`]*)`$")
	rows := 0
	for line := range strings.SplitSeq(rest, "\n") {
		if !strings.HasPrefix(line, "|") {
			if rows > 0 {
				break
			}
			continue
		}
		cols := strings.Split(line, "|")
		if len(cols) < 5 || strings.HasPrefix(strings.TrimSpace(cols[1]), "---") {
			continue
		}
		rows++
		var names []string
		for _, m := range varRE.FindAllStringSubmatch(cols[1], -1) {
			names = append(names, m[1])
			if m[2] != "" {
				names = append(names, m[1]+"_FILE")
			}
		}
		for _, n := range names {
			if _, ok := settings[n]; !ok {
				t.Errorf("README settings table names %s, which is not in internal/config's settings table", n)
			}
			documented[n] = true
		}
		def := strings.TrimSpace(cols[len(cols)-2])
		m := defRE.FindStringSubmatch(def)
		if len(names) != 1 || m == nil {
			continue
		}
		if got := settings[names[0]].Default; !sameValue(got, m[1]) {
			t.Errorf("README settings table, row %s: default `%s`, but the code's is %q", names[0], m[1], got)
		}
	}
	for env := range settings {
		if !documented[env] {
			t.Errorf("README settings table lacks a row naming %s (%s)", env, settings[env].Usage)
		}
	}
}

// sameValue compares a code default with the README's way of writing it.
func sameValue(code, doc string) bool {
	if code == doc || strings.HasPrefix(doc, "QTB_") { // "as another variable"
		return true
	}
	if a, err := time.ParseDuration(code); err == nil {
		b, err := time.ParseDuration(doc)
		return err == nil && a == b
	}
	return false
}
