package qliktest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// filterExpr is a parsed SCIM filter (RFC 7644 section 3.4.2.2), restricted
// to what Qlik documents for its list endpoints: attribute comparisons with
// eq, ne, co, sw, ew and pr, combined with and, or, not and parentheses.
// Values are JSON strings. Keywords and attribute names are
// case-insensitive, and so are comparisons: Qlik documents that "all
// conditional statements within this query parameter are case insensitive".
type filterExpr interface {
	match(get func(attr string) string) bool
}

type (
	andExpr     struct{ l, r filterExpr }
	orExpr      struct{ l, r filterExpr }
	notExpr     struct{ e filterExpr }
	compareExpr struct {
		attr, op, value string // attr in canonical case, value lower-cased
		grouped         bool   // inside parentheses
	}
)

func (e andExpr) match(get func(string) string) bool { return e.l.match(get) && e.r.match(get) }
func (e orExpr) match(get func(string) string) bool  { return e.l.match(get) || e.r.match(get) }
func (e notExpr) match(get func(string) string) bool { return !e.e.match(get) }

func (e compareExpr) match(get func(string) string) bool {
	v := strings.ToLower(get(e.attr))
	switch e.op {
	case "eq":
		return v == e.value
	case "ne":
		return v != e.value
	case "co":
		return strings.Contains(v, e.value)
	case "sw":
		return strings.HasPrefix(v, e.value)
	case "ew":
		return strings.HasSuffix(v, e.value)
	default: // pr
		return v != ""
	}
}

// parseFilter parses s, accepting only the attributes in attrs (canonical
// spelling). An empty filter matches everything.
func parseFilter(s string, attrs ...string) (filterExpr, error) {
	toks, err := scanFilter(s)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, nil
	}
	p := &filterParser{toks: toks, attrs: attrs}
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.i != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q", p.toks[p.i].text)
	}
	return e, nil
}

type filterToken struct {
	text   string
	quoted bool // a JSON string literal, already decoded into text
}

func scanFilter(s string) ([]filterToken, error) {
	var toks []filterToken
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == ' ' || c == '\t':
			i++
		case c == '(' || c == ')':
			toks = append(toks, filterToken{text: string(c)})
			i++
		case c == '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' {
					j++
				}
			}
			if j >= len(s) {
				return nil, errors.New("unterminated string")
			}
			var v string
			if err := json.Unmarshal([]byte(s[i:j+1]), &v); err != nil {
				return nil, errors.New("invalid string literal")
			}
			toks = append(toks, filterToken{text: v, quoted: true})
			i = j + 1
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t()\"", rune(s[j])) {
				j++
			}
			toks = append(toks, filterToken{text: s[i:j]})
			i = j
		}
	}
	return toks, nil
}

type filterParser struct {
	toks  []filterToken
	i     int
	attrs []string
	depth int // of parentheses, bounded so a hostile filter cannot recurse deeply
}

const maxFilterDepth = 32

func (p *filterParser) peekKeyword(kw string) bool {
	return p.i < len(p.toks) && !p.toks[p.i].quoted && strings.EqualFold(p.toks[p.i].text, kw)
}

func (p *filterParser) or() (filterExpr, error) {
	l, err := p.and()
	for err == nil && p.peekKeyword("or") {
		p.i++
		var r filterExpr
		if r, err = p.and(); err == nil {
			l = orExpr{l, r}
		}
	}
	return l, err
}

func (p *filterParser) and() (filterExpr, error) {
	l, err := p.unary()
	for err == nil && p.peekKeyword("and") {
		p.i++
		var r filterExpr
		if r, err = p.unary(); err == nil {
			l = andExpr{l, r}
		}
	}
	return l, err
}

func (p *filterParser) unary() (filterExpr, error) {
	if p.peekKeyword("not") {
		p.i++
		if !p.peekKeyword("(") {
			return nil, errors.New("not must be followed by (")
		}
		e, err := p.unary()
		return notExpr{e}, err
	}
	if p.peekKeyword("(") {
		if p.depth++; p.depth > maxFilterDepth {
			return nil, errors.New("too many nested parentheses")
		}
		defer func() { p.depth-- }()
		p.i++
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		if !p.peekKeyword(")") {
			return nil, errors.New("missing )")
		}
		p.i++
		return e, nil
	}
	return p.compare()
}

func (p *filterParser) compare() (filterExpr, error) {
	if p.i+1 >= len(p.toks) || p.toks[p.i].quoted {
		return nil, errors.New("expected attribute and operator")
	}
	attr, ok := p.attr(p.toks[p.i].text)
	if !ok {
		return nil, fmt.Errorf("attribute %q cannot be filtered on", p.toks[p.i].text)
	}
	op := strings.ToLower(p.toks[p.i+1].text)
	p.i += 2
	switch op {
	case "pr":
		return compareExpr{attr: attr, op: op, grouped: p.depth > 0}, nil
	case "eq", "ne", "co", "sw", "ew":
	default:
		return nil, fmt.Errorf("operator %q is not supported", op)
	}
	if p.i >= len(p.toks) || !p.toks[p.i].quoted {
		return nil, errors.New("expected a quoted string value")
	}
	v := p.toks[p.i].text
	p.i++
	return compareExpr{attr: attr, op: op, value: strings.ToLower(v), grouped: p.depth > 0}, nil
}

func (p *filterParser) attr(name string) (string, bool) {
	for _, a := range p.attrs {
		if strings.EqualFold(a, name) {
			return a, true
		}
	}
	return "", false
}

// usersFilter parses a filter of GET /api/v1/users in the reference's
// grammar: eq on id, subject, email, name and status, co on name, email and
// subject, combined with and, or and parentheses; a status term in a filter
// with other terms must sit in parentheses, e.g.
// `email eq "a@b" and (status eq "active" or status eq "invited")`. ne,
// sw, ew, pr and not are refused.
func usersFilter(s string) (filterExpr, error) {
	e, err := parseFilter(s, "id", "subject", "email", "name", "status")
	if err != nil || e == nil {
		return e, err
	}
	var terms []compareExpr
	var walk func(filterExpr) error
	walk = func(e filterExpr) error {
		switch e := e.(type) {
		case andExpr:
			return errors.Join(walk(e.l), walk(e.r))
		case orExpr:
			return errors.Join(walk(e.l), walk(e.r))
		case notExpr:
			return errors.New("not is not supported")
		case compareExpr:
			terms = append(terms, e)
		}
		return nil
	}
	if err := walk(e); err != nil {
		return nil, err
	}
	for _, c := range terms {
		switch {
		case c.op == "co" && (c.attr == "name" || c.attr == "email" || c.attr == "subject"):
		case c.op == "co":
			return nil, fmt.Errorf("co is supported on name, email and subject only, not %s", c.attr)
		case c.op != "eq":
			return nil, fmt.Errorf("operator %q is not supported", c.op)
		}
		if c.attr == "status" && len(terms) > 1 && !c.grouped {
			return nil, errors.New("status terms must be grouped in parentheses")
		}
	}
	return e, nil
}
