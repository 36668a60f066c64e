package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// StartTLS runs redis-server like Start, but listening for TLS only, with
// a certificate for 127.0.0.1 from a CA generated for the test (see
// CAFile), no client certificates required, the default user disabled and
// aclUser, with password aclPass, allowed everything. URL returns a
// rediss:// URL with the user's credentials.
func StartTLS(tb testing.TB, aclUser, aclPass string) *Server {
	tb.Helper()
	lookPath(tb, "redis-server")
	dir := tb.TempDir()
	tf, err := writeTLSFiles(dir)
	if err != nil {
		tb.Fatalf("redistest: generate certificates: %v", err)
	}
	return launch(tb, &Server{
		dir:  dir,
		tls:  tf,
		user: aclUser,
		pass: aclPass,
		args: []string{
			"--user", aclUser, "on", ">" + aclPass, "~*", "&*", "+@all",
			"--user", "default", "off",
		},
	})
}

// CAFile returns the PEM file of the CA that signed a StartTLS server's
// certificate, or "" for a server without TLS.
func (s *Server) CAFile() string {
	if s.tls == nil {
		return ""
	}
	return s.tls.ca
}

// tlsFiles are the PEM files of a StartTLS server.
type tlsFiles struct {
	ca, cert, key string
	roots         *x509.CertPool
}

// clientConfig trusts the test CA only.
func (tf *tlsFiles) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: tf.roots, MinVersion: tls.VersionTLS12}
}

// writeTLSFiles generates a CA and a server certificate for 127.0.0.1 and
// localhost, valid for a day, into dir.
func writeTLSFiles(dir string) (*tlsFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}

	tf := &tlsFiles{
		ca:    filepath.Join(dir, "ca.pem"),
		cert:  filepath.Join(dir, "server.pem"),
		key:   filepath.Join(dir, "server-key.pem"),
		roots: x509.NewCertPool(),
	}
	tf.roots.AddCert(caCert)
	for path, block := range map[string]*pem.Block{
		tf.ca:   {Type: "CERTIFICATE", Bytes: caDER},
		tf.cert: {Type: "CERTIFICATE", Bytes: der},
		tf.key:  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	return tf, nil
}
