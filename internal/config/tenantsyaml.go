package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
)

// tenantsFileError rewords a decoding error of the tenants file for the
// operator: that the file is YAML, where (line and field) and what it
// expects. sigs.k8s.io/yaml converts YAML to JSON before decoding, so its
// own messages speak of JSON and lose the line.
func tenantsFileError(raw []byte, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field[strings.LastIndex(te.Field, ".")+1:]
		return fmt.Errorf("YAML%s: %s: want %s, got a %s", lineOf(raw, field), te.Field, kindName(te.Type), te.Value)
	}
	inner := err
	for u := errors.Unwrap(inner); u != nil; u = errors.Unwrap(inner) {
		inner = u
	}
	msg := strings.TrimPrefix(inner.Error(), "yaml: ")
	// encoding/json has no type for an unknown field; its message is the
	// only place the name is.
	if name, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		return fmt.Errorf("YAML%s: unknown field %q (the file takes tenants:, each entry %s)", lineOf(raw, name), name, strings.Join(jsonFields(reflect.TypeFor[TenantEntry]()), ", "))
	}
	if strings.HasPrefix(msg, "line ") {
		return fmt.Errorf("not valid YAML: %s", msg)
	}
	return fmt.Errorf("YAML: %s", strings.TrimPrefix(msg, "json: "))
}

// lineOf returns " line N" for the first line that sets key, or "".
func lineOf(raw []byte, key string) string {
	re, err := regexp.Compile(`^[\s-]*"?` + regexp.QuoteMeta(key) + `"?\s*:`)
	if err != nil || key == "" {
		return ""
	}
	for i, l := range strings.Split(string(raw), "\n") {
		if re.MatchString(l) {
			return fmt.Sprintf(" line %d", i+1)
		}
	}
	return ""
}

// kindName says what a Go type is in YAML terms.
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "a mapping"
	}
	return t.String()
}

// jsonFields lists the keys a struct decodes.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}
