package helm_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// keyedSingleTenant turns singleTenant's secrets into private keys
// (Private Key JWT), with their kids and algorithms.
var keyedSingleTenant = []string{
	"--set", "secrets.clientSecret.existingSecret=", "--set", "secrets.clientKey.existingSecret=qtb-client-key",
	"--set", "config.clientKeyId=imp-2026", "--set", "config.clientKeyAlg=RS512",
	"--set", "secrets.adminClientSecret.existingSecret=", "--set", "secrets.adminClientKey.existingSecret=qtb-admin-key",
	"--set", "config.adminClientKeyId=adm-1", "--set", "config.adminClientKeyAlg=ES384",
}

// TestChartRendersBothClientAuthModes: a secret or a key, each mounted
// from its Secret as a file; both at once, neither, or an algorithm Qlik
// does not take fails the render.
func TestChartRendersBothClientAuthModes(t *testing.T) {
	t.Parallel()
	envOf := func(spec corev1.PodSpec) map[string]string {
		out := map[string]string{}
		for _, e := range spec.Containers[0].Env {
			out[e.Name] = e.Value
		}
		return out
	}
	base := func(more ...string) []string {
		return append(append([]string{"-f", allOptions}, singleTenant...), more...)
	}
	secretMode := render(t, base()...).deployment(t).Spec.Template.Spec
	keyMode := render(t, base(keyedSingleTenant...)...).deployment(t).Spec.Template.Spec
	if s := envOf(secretMode); s["QTB_CLIENT_SECRET_FILE"] == "" || s["QTB_CLIENT_KEY_FILE"] != "" {
		t.Errorf("secret mode env: %v", s)
	}
	k := envOf(keyMode)
	for name, want := range map[string]string{
		"QTB_CLIENT_KEY_FILE":          "/var/run/secrets/qlik-token-broker/client-key/client-key.pem",
		"QTB_CLIENT_KEY_ID":            "imp-2026",
		"QTB_CLIENT_KEY_ALG":           "RS512",
		"QTB_ADMIN_CLIENT_KEY_FILE":    "/var/run/secrets/qlik-token-broker/admin-client-key/admin-client-key.pem",
		"QTB_ADMIN_CLIENT_KEY_ID":      "adm-1",
		"QTB_ADMIN_CLIENT_KEY_ALG":     "ES384",
		"QTB_CLIENT_SECRET_FILE":       "",
		"QTB_ADMIN_CLIENT_SECRET_FILE": "",
	} {
		if k[name] != want {
			t.Errorf("key mode: %s = %q, want %q", name, k[name], want)
		}
	}
	found := map[string]bool{}
	for _, v := range keyMode.Volumes {
		if v.Secret != nil {
			found[v.Secret.SecretName] = true
			if v.Secret.SecretName == "qtb-client-key" && (len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != "client-key.pem") {
				t.Errorf("client key volume %+v", v.Secret)
			}
		}
	}
	if !found["qtb-client-key"] || !found["qtb-admin-key"] || found["qtb-client"] {
		t.Errorf("key mode volumes: %v", found)
	}

	for _, bad := range [][]string{
		base("--set", "secrets.clientKey.existingSecret=qtb-client-key"),
		base("--set", "secrets.clientSecret.existingSecret="),
		base("--set", "config.clientKeyAlg=PS256"),
	} {
		out, _, err := runHelm(t, append([]string{"template", "qtb", chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, bad...)...)
		if err == nil {
			t.Errorf("rendered %v:\n%.300s", bad, out)
		}
	}
}
