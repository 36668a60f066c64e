package helm_test

import (
	"maps"
	"path"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestTenants: a tenants file (inline as text or as a mapping, or an
// existing ConfigMap) replaces the single-tenant settings, and each tenant's
// Secret is mounted whole where the file points.
func TestTenants(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args      []string
		configMap string // tenants ConfigMap the pod mounts
		rendered  bool   // whether the chart renders it
	}{
		"inline text": {nil, "qtb-qlik-token-broker-tenants", true},
		// The later --set-json replaces multiTenant's text.
		"inline mapping": {[]string{"--set-json",
			`tenants.inline={"tenants":[{"id":"acme","url":"https://acme.eu.qlikcloud.com","clientId":"a","clientSecretFile":"/etc/qlik-token-broker/acme/client-secret"}]}`},
			"qtb-qlik-token-broker-tenants", true},
		"existing ConfigMap": {[]string{"--set", "tenants.inline=", "--set", "tenants.existingConfigMap=qtb-tenants"}, "qtb-tenants", false},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := render(t, append(append(slices.Clone(minimal), multiTenant...), tc.args...)...)
			spec := m.deployment(t).Spec.Template.Spec
			c := spec.Containers[0]
			checkContainer(t, c, spec.Volumes, "api")
			vars := env(c)
			if vars["QTB_TENANTS_FILE"] != "/etc/qlik-token-broker/tenants/tenants.yaml" || vars["QTB_TENANT_CLAIM"] != "tenant" {
				t.Errorf("QTB_TENANTS_FILE=%q QTB_TENANT_CLAIM=%q", vars["QTB_TENANTS_FILE"], vars["QTB_TENANT_CLAIM"])
			}
			for _, unset := range []string{"QTB_TENANT_URL", "QTB_CLIENT_ID", "QTB_CLIENT_SECRET_FILE"} {
				if _, ok := vars[unset]; ok {
					t.Errorf("%s is set beside a tenants file", unset)
				}
			}
			secrets := map[string]string{} // mount path -> Secret
			for _, v := range spec.Volumes {
				if v.Name == "qtb-tenants" && (v.ConfigMap == nil || v.ConfigMap.Name != tc.configMap) {
					t.Errorf("tenants volume %+v, want ConfigMap %s", v.VolumeSource, tc.configMap)
				}
				if v.Secret != nil && strings.HasPrefix(v.Name, "qtb-tenant-") {
					for _, vm := range c.VolumeMounts {
						if vm.Name == v.Name {
							secrets[vm.MountPath] = v.Secret.SecretName
						}
					}
				}
			}
			// The trailing slash of globex's mountPath is cleaned away.
			if want := map[string]string{"/etc/qlik-token-broker/acme": "qtb-acme", "/etc/qlik-token-broker/globex": "qtb-globex"}; !maps.Equal(secrets, want) {
				t.Errorf("tenant Secrets mounted %v, want %v", secrets, want)
			}
			cm, ok := m.configMaps[tc.configMap]
			if ok != tc.rendered {
				t.Fatalf("tenants ConfigMap %s rendered: %v, want %v", tc.configMap, ok, tc.rendered)
			}
			if ok {
				checkTenantFiles(t, cm.Data["tenants.yaml"], c, spec.Volumes)
			}
		})
	}
}

// checkTenantFiles asserts every secret file the tenants file names lies in
// a directory where a whole Secret is mounted read-only.
func checkTenantFiles(t *testing.T, tenantsYAML string, c corev1.Container, volumes []corev1.Volume) {
	t.Helper()
	var f struct {
		Tenants []struct {
			ID                    string `json:"id"`
			ClientSecretFile      string `json:"clientSecretFile"`
			AdminClientSecretFile string `json:"adminClientSecretFile"`
		} `json:"tenants"`
	}
	if err := yaml.Unmarshal([]byte(tenantsYAML), &f); err != nil || len(f.Tenants) == 0 {
		t.Fatalf("tenants file: %v\n%s", err, tenantsYAML)
	}
	byName := map[string]corev1.Volume{}
	for _, v := range volumes {
		byName[v.Name] = v
	}
	for _, e := range f.Tenants {
		for _, file := range []string{e.ClientSecretFile, e.AdminClientSecretFile} {
			if file == "" {
				continue
			}
			i := slices.IndexFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == path.Dir(file) })
			if i < 0 {
				t.Errorf("tenant %s: %s is in no mounted directory", e.ID, file)
				continue
			}
			vm := c.VolumeMounts[i]
			v := byName[vm.Name]
			switch {
			case !vm.ReadOnly || vm.SubPath != "":
				t.Errorf("tenant %s: mount %s must be read-only, without subPath", e.ID, vm.Name)
			case v.Secret == nil:
				t.Errorf("tenant %s: %s is not from a Secret (volume %s)", e.ID, file, vm.Name)
			case len(v.Secret.Items) > 0:
				t.Errorf("tenant %s: volume %s projects only %v; mount the whole Secret", e.ID, vm.Name, v.Secret.Items)
			}
		}
	}
}
