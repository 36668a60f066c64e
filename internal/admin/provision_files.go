package admin

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/qtb-dev/qlik-token-broker/internal/config"
)

// The files provision keeps: the Secret manifest and the tenants file.

// saveSecret writes the Secret manifest unless it already holds sec under
// the right name; an unchanged one loose in mode is tightened to 0600.
func (p *provisioner) saveSecret(sec string) error {
	return p.saveManifest(p.manifest.with(p.o.secretName, sec))
}

// saveManifest writes m unless the manifest already is m; an unchanged one
// loose in mode is tightened to 0600.
func (p *provisioner) saveManifest(m *secretManifest) error {
	if p.manifest.equal(m) {
		st, err := os.Stat(p.o.secretOut)
		if err != nil || st.Mode().Perm()&0o077 == 0 {
			return err
		}
		if !p.o.dryRun {
			if err := os.Chmod(p.o.secretOut, 0o600); err != nil {
				return err
			}
		}
		p.act("set mode 0600 on "+p.o.secretOut, "set mode 0600 on "+p.o.secretOut)
		return nil
	}
	data, err := yaml.Marshal(m)
	if err != nil {
		return err
	}
	if !p.o.dryRun {
		if err := writePrivateFile(p.o.secretOut, data); err != nil {
			return err
		}
	}
	p.manifest = m
	what := fmt.Sprintf("%s (Secret %s)", p.o.secretOut, p.o.secretName)
	p.act("write "+what, "wrote "+what)
	return nil
}

// saveRegistry writes the tenant's entry into the tenants file: the entry
// with the same id is updated in place (settings provision does not manage,
// such as userLookup, are kept), other tenants are left as they are.
func (p *provisioner) saveRegistry(clientID string) error {
	next := config.TenantsFile{Tenants: slices.Clone(p.registry.Tenants)}
	i := slices.IndexFunc(next.Tenants, func(e config.TenantEntry) bool { return e.ID == p.o.tenantID })
	if i < 0 {
		next.Tenants = append(next.Tenants, config.TenantEntry{ID: p.o.tenantID})
		i = len(next.Tenants) - 1
	}
	e := &next.Tenants[i]
	e.URL = p.api.qlik.BaseURL()
	e.ClientID = clientID
	e.ClientSecretFile = path.Join(p.o.secretMountDir, secretKey)
	p.registryAuth(e)
	if len(p.o.origins) > 0 {
		e.AllowedOrigins = slices.Clone([]string(p.o.origins))
	}
	if p.registryExists && reflect.DeepEqual(next, p.registry) {
		return nil
	}
	data, err := yaml.Marshal(next)
	if err != nil {
		return err
	}
	if !p.o.dryRun {
		if err := writePrivateFile(p.o.registryOut, data); err != nil {
			return err
		}
	}
	what := fmt.Sprintf("%s (tenant %s)", p.o.registryOut, p.o.tenantID)
	p.act("write "+what, "wrote "+what)
	return nil
}

// readRegistry reads a tenants file as strictly as the broker does (without
// its secrets), so a file the broker would reject is never rewritten.
func readRegistry(file string) (config.TenantsFile, bool, error) {
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return config.TenantsFile{}, false, nil
	}
	if err != nil {
		return config.TenantsFile{}, false, err
	}
	f, err := config.ParseTenantsFile(raw)
	if err != nil {
		return config.TenantsFile{}, false, fmt.Errorf("%s is not a tenants file: %w", file, err)
	}
	return f, true, nil
}

// secretManifest is a Kubernetes Secret as provision reads and writes it.
// Metadata and keys other than client-secret are kept as found.
type secretManifest struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   map[string]any    `json:"metadata"`
	Type       string            `json:"type"`
	Data       map[string]string `json:"data,omitempty"` // base64
	StringData map[string]string `json:"stringData,omitempty"`
}

func readSecretManifest(file string) (*secretManifest, error) {
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m secretManifest
	if err := yaml.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s is not a Secret manifest: %w", file, err)
	}
	if m.Kind != "Secret" {
		return nil, fmt.Errorf("%s holds a %q, not a Secret: refusing to overwrite it", file, m.Kind)
	}
	return &m, nil
}

// clientSecret returns the stored client secret, "" when there is none.
func (m *secretManifest) clientSecret() string {
	if m == nil {
		return ""
	}
	if v := m.StringData[secretKey]; v != "" {
		return v
	}
	v, _ := base64.StdEncoding.DecodeString(m.Data[secretKey])
	return strings.TrimRight(string(v), "\r\n")
}

// with returns a copy of m (or a new Secret) named name holding sec.
func (m *secretManifest) with(name, sec string) *secretManifest {
	next := &secretManifest{APIVersion: "v1", Kind: "Secret", Type: "Opaque", Metadata: map[string]any{}, StringData: map[string]string{}}
	if m != nil {
		for k, v := range m.Metadata {
			next.Metadata[k] = v
		}
		for k, v := range m.StringData {
			if k != keyEntry { // a client has a secret or a key
				next.StringData[k] = v
			}
		}
		for k, v := range m.Data {
			if k != secretKey && k != keyEntry {
				if next.Data == nil {
					next.Data = map[string]string{}
				}
				next.Data[k] = v
			}
		}
	}
	next.Metadata["name"] = name
	next.StringData[secretKey] = sec
	return next
}

func (m *secretManifest) equal(o *secretManifest) bool {
	return m != nil && o != nil && reflect.DeepEqual(*m, *o)
}

// writePrivateFile replaces file with data, mode 0600, atomically: readers
// (and a watching broker) see the old or the new content, never a part.
func writePrivateFile(file string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*") // created 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
