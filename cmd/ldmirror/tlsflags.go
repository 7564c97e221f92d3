package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/urfave/cli/v2"
)

// tlsFlags are the certificate flags of the daemon (with the plaintext
// escape hatch for its data link) and of the control-plane members.
func tlsFlags(daemon bool) []cli.Flag {
	f := []cli.Flag{
		&cli.StringFlag{Name: "tls-dir", Usage: "`DIR` as `ldmirror pki issue` writes it: DIR/ca.crt, DIR/NODE.crt, DIR/NODE.key (NODE: --node-id)"},
		&cli.StringFlag{Name: "tls-cert", Usage: "this node's certificate `FILE` (PEM, then any intermediates); default from --tls-dir"},
		&cli.StringFlag{Name: "tls-key", Usage: "its private key `FILE` (PEM, mode 0600); default from --tls-dir"},
		&cli.StringFlag{Name: "tls-ca", Usage: "`FILE` of the CA certificate(s) peers must chain to; default from --tls-dir"},
	}
	if daemon {
		f = append(f,
			&cli.BoolFlag{Name: "insecure-plaintext-link", Usage: "run the data link without TLS: every block crosses the network in clear, and anyone on the path can read it and alter, drop or forge writes and acks unnoticed; only the handshake is authenticated (--secret-file). For measurement only; the control plane keeps TLS"},
			&cli.StringFlag{Name: "secret-file", Usage: "with --insecure-plaintext-link: `FILE` (mode 0600) holding the shared secret (>= 16 bytes)"},
		)
	}
	return f
}

// loadTLS loads node id's certificate as c's TLS flags name it. It
// returns nil, nil when no flag names one.
func loadTLS(c *cli.Context, id string) (*pki.Source, error) {
	var files pki.Files
	if d := c.String("tls-dir"); d != "" {
		files = pki.DirFiles(d, id)
	}
	for _, f := range []struct {
		flag string
		dst  *string
	}{{"tls-cert", &files.Cert}, {"tls-key", &files.Key}, {"tls-ca", &files.CA}} {
		if v := c.String(f.flag); v != "" {
			*f.dst = v
		}
	}
	if files == (pki.Files{}) {
		return nil, nil
	}
	if files.Cert == "" || files.Key == "" || files.CA == "" {
		return nil, errors.New("--tls-cert, --tls-key and --tls-ca are all needed (or --tls-dir)")
	}
	src, err := pki.Load(files)
	if err != nil {
		return nil, err
	}
	return src, nil
}

// noCertificate says what to do about a missing certificate.
const noCertificate = "this node needs its certificate: --tls-dir DIR (ldmirror pki init, ldmirror pki issue; docs/operations.md) or --tls-cert, --tls-key and --tls-ca"

// credentials are what a node authenticates with: its certificate (which
// a reload re-reads), or for a daemon's plaintext data link the shared
// secret.
type credentials struct {
	tls       *pki.Source
	plaintext bool
	secret    []byte
}

// nodeCredentials loads the credentials c's flags name for node id.
// needTLS says whether the node talks to a peer or the control plane at
// all.
func nodeCredentials(c *cli.Context, id string, needTLS bool, log *slog.Logger) (*credentials, error) {
	cr := &credentials{plaintext: c.Bool("insecure-plaintext-link")}
	if f := c.String("secret-file"); f != "" {
		if !cr.plaintext {
			return nil, errors.New("--secret-file is used only with --insecure-plaintext-link: the data link authenticates with certificates (--tls-dir)")
		}
		s, err := readSecretFile(f)
		if err != nil {
			return nil, err
		}
		cr.secret = s
	} else if cr.plaintext {
		return nil, errors.New("--insecure-plaintext-link needs --secret-file")
	}
	src, err := loadTLS(c, id)
	if err != nil {
		return nil, err
	}
	if src == nil && needTLS {
		return nil, errors.New(noCertificate)
	}
	cr.tls = src
	if src != nil {
		cert := src.Certificate()
		log.Info("TLS certificate loaded", "node", src.Identity().ID, "role", src.Identity().Role,
			"serial", fmt.Sprintf("%x", cert.SerialNumber), "not_after", cert.NotAfter.UTC())
	}
	return cr, nil
}

// link sets how cfg's data link authenticates: with the certificate, or
// on a plaintext link with the secret.
func (cr *credentials) link(cfg node.Config) node.Config {
	if cr.plaintext {
		cfg.InsecurePlaintext, cfg.Secret = true, cr.secret
	} else {
		cfg.TLS = cr.tls
	}
	return cfg
}

// daemonCredentials is nodeCredentials for the daemon: it needs a
// certificate to talk to a peer (unless its link is plaintext) and for the
// control plane.
func daemonCredentials(c *cli.Context, id string, log *slog.Logger) (*credentials, error) {
	peer := c.String("peer") != "" || cluster.Role(c.String("role")) == cluster.RoleSecondary
	cluster := c.String("cluster-bind") != ""
	return nodeCredentials(c, id, cluster || peer && !c.Bool("insecure-plaintext-link"), log)
}
