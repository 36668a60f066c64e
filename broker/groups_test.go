package broker

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

func TestScopedGroups(t *testing.T) {
	names := []string{"acme-a", "acme-b", "other", "xacme-c"}
	in, out := scopedGroups(names, "acme-")
	if !slices.Equal(in, []string{"acme-a", "acme-b"}) || out != 2 {
		t.Fatalf("scoped = %q, %d left out", in, out)
	}
	if in, out := scopedGroups(names, ""); !slices.Equal(in, names) || out != 0 {
		t.Fatalf("without a prefix: %q, %d left out", in, out)
	}
}

// Only custom groups within the prefix count and are removed: IdP groups
// (even one named like a wanted group), system groups and custom groups
// outside the prefix are neither present nor removed.
func TestDiffGroups(t *testing.T) {
	current := []qlik.Group{
		{ID: "1", Name: "acme-a", ProviderType: "custom"},
		{ID: "2", Name: "acme-old", ProviderType: "custom"},
		{ID: "3", Name: "acme-b", ProviderType: "idp"},
		{ID: "4", Name: "other", ProviderType: "custom"},
		{ID: "000000000000000000000001", Name: "com.qlik.Everyone", ProviderType: ""},
	}
	add, remove := diffGroups(current, []string{"acme-a", "acme-b", "acme-c"}, "acme-")
	if !slices.Equal(add, []string{"acme-b", "acme-c"}) {
		t.Fatalf("add = %q", add)
	}
	if len(remove) != 1 || remove[0].ID != "2" {
		t.Fatalf("remove = %+v", remove)
	}
	add, remove = diffGroups(current, []string{"acme-a", "acme-old"}, "acme-")
	if len(add) != 0 || len(remove) != 0 {
		t.Fatalf("in step, yet add %q remove %+v", add, remove)
	}
	// Without a prefix every custom group is the broker's, but still no
	// IdP or system group.
	_, remove = diffGroups(current, nil, "")
	if ids := []string{remove[0].ID, remove[1].ID, remove[2].ID}; len(remove) != 3 || !slices.Equal(ids, []string{"1", "2", "4"}) {
		t.Fatalf("remove = %+v", remove)
	}
}

// The stored hash names the set and the prefix, and reveals no name.
func TestGroupsHash(t *testing.T) {
	b, err := New(Config{
		Tenants: []Tenant{{ID: "acme", Issuer: noIssuer{}, Credentials: qlik.Credentials{ClientID: "client-1"}}},
		Metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ab := b.groupsHash("acme-", []string{"acme-a", "acme-b"})
	for _, other := range []string{
		b.groupsHash("acme-", []string{"acme-a"}),
		b.groupsHash("acme-", []string{"acme-a", "acme-b", "acme-c"}),
		b.groupsHash("acme", []string{"acme-a", "acme-b"}),
		b.groupsHash("acme-", []string{"acme-aacme-b"}),
		b.groupsHash("acme-", nil),
	} {
		if other == ab {
			t.Fatalf("two sets share the hash %s", ab)
		}
	}
	if again := b.groupsHash("acme-", []string{"acme-a", "acme-b"}); again != ab {
		t.Fatalf("hash not stable: %s then %s", ab, again)
	}
	k := keys{token: "qtb:tok:acme:{h}"}
	if k.groups() != "qtb:groups:acme:{h}" || k.groupsLease() != "qtb:groupslock:acme:{h}" {
		t.Fatalf("groups keys %q, %q", k.groups(), k.groupsLease())
	}
}

func TestAppliedOps(t *testing.T) {
	added, removed := appliedOps([]string{"a", "b"}, []string{"c", "d"}, []string{"b", "c"})
	if added != 1 || removed != 1 {
		t.Fatalf("added %d removed %d", added, removed)
	}
}
