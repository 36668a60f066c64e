package session

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// The groups claim: the names of the groups the OEM's session puts the
// user in, which the broker keeps the user's Qlik custom groups in step
// with. It is checked whole: a claim that cannot be synced as it is
// rejects the token rather than syncing part of it.

var errGroupsClaim = errors.New("groups claim is not a JSON array of group names")

// claimGroups reads the groups claim name: absent is (nil, false, nil); a
// JSON array of at most max non-empty strings without control characters,
// each at most MaxGroupNameChars characters, is its names sorted and
// without duplicates; anything else is an error.
func claimGroups(claims jwt.MapClaims, name string, max int) ([]string, bool, error) {
	raw, ok := claims[name]
	if !ok {
		return nil, false, nil
	}
	list, ok := raw.([]any)
	switch {
	case !ok:
		return nil, false, errGroupsClaim
	case len(list) > max:
		return nil, false, fmt.Errorf("%w: more than %d entries", errGroupsClaim, max)
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		switch {
		case !ok:
			return nil, false, fmt.Errorf("%w: an entry is not a string", errGroupsClaim)
		case strings.TrimSpace(s) == "":
			return nil, false, fmt.Errorf("%w: an entry is empty", errGroupsClaim)
		case utf8.RuneCountInString(s) > MaxGroupNameChars:
			return nil, false, fmt.Errorf("%w: a name is longer than %d characters", errGroupsClaim, MaxGroupNameChars)
		case strings.ContainsFunc(s, unicode.IsControl):
			return nil, false, fmt.Errorf("%w: a name has control characters", errGroupsClaim)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out), true, nil
}
