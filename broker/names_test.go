package broker

import (
	"strconv"
	"testing"
)

// TestNameCache: remembered names are found by group and user value only
// (the same value in another group is another user), and the cache holds
// at most max names, starting over when full.
func TestNameCache(t *testing.T) {
	c := nameCache{max: 3}
	a := nameGroup{tenant: "acme", client: "c1", scope: "user_default", field: "userId"}
	other := a
	other.field = "subject"
	c.put(a, "u1", keys{token: "qtb:tok:acme:{1}"})
	c.put(other, "u1", keys{token: "qtb:tok:acme:{2}"})
	for _, tc := range []struct {
		g     nameGroup
		value string
		want  string
		ok    bool
	}{{a, "u1", "qtb:tok:acme:{1}", true}, {other, "u1", "qtb:tok:acme:{2}", true}, {a, "u2", "", false}} {
		if k, ok := c.get(tc.g, tc.value); ok != tc.ok || k.token != tc.want {
			t.Errorf("get(%v, %s) = %q, %v; want %q, %v", tc.g, tc.value, k.token, ok, tc.want, tc.ok)
		}
	}
	c.put(a, "u1", keys{token: "qtb:tok:acme:{1}"}) // again: not a new name
	if c.n != 2 {
		t.Fatalf("%d names counted after putting one twice, want 2", c.n)
	}
	for i := range 3 {
		c.put(a, "v"+strconv.Itoa(i), keys{token: "x"})
	}
	if c.n > c.max {
		t.Fatalf("%d names held, more than max %d", c.n, c.max)
	}
	if _, ok := c.get(other, "u1"); ok {
		t.Fatal("a full cache did not start over")
	}
}
