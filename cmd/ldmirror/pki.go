package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ldmirror/ldmirror/pki"
	"github.com/urfave/cli/v2"
)

// pkiCommand is `ldmirror pki`: a small CA for one pair and the node
// certificates the daemons and the witness authenticate with (docs/operations.md).
func pkiCommand() *cli.Command {
	dir := &cli.StringFlag{Name: "dir", Usage: "pki `DIR` (mode 0700): ca.key, ca.crt and one NODE.key, NODE.crt per node", Required: true}
	return &cli.Command{
		Name:  "pki",
		Usage: "create the pair's certificate authority and the nodes' certificates",
		Description: "Every node (data hosts and the witness) needs its own key and certificate, issued by one CA:\n" +
			"  ldmirror pki init  --dir DIR\n" +
			"  ldmirror pki issue --dir DIR a; ldmirror pki issue --dir DIR b; ldmirror pki issue --dir DIR --witness w\n" +
			"then give each node ca.crt, NODE.crt and NODE.key (mode 0600, in a 0700 directory) and start it with\n" +
			"--tls-dir. Issuing again for a node replaces its pair; SIGHUP makes a running node use it.\n" +
			"Certificates from another CA work too (--tls-cert, --tls-key, --tls-ca) if they carry the URI SAN\n" +
			"ldmirror://data/NODE or ldmirror://witness/NODE and the TLS server and client usages.",
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create the CA: a new P-256 key (ca.key) and a self-signed certificate (ca.crt)",
				Flags: []cli.Flag{
					dir,
					&cli.StringFlag{Name: "name", Usage: "the CA's common `NAME`", Value: "ldmirror CA"},
					&cli.IntFlag{Name: "days", Usage: "validity in `DAYS`", Value: int(pki.DefaultCAValidity / (24 * time.Hour))},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return fmt.Errorf("pki init takes no arguments, got %q", c.Args().First())
					}
					d := c.String("dir")
					cert, err := pki.InitCA(d, c.String("name"), days(c))
					if err != nil {
						return err
					}
					fmt.Printf("created CA %q in %s: %s (keep it on this host only), %s; valid until %s\n",
						cert.Subject.CommonName, d, pki.CAKeyFile, pki.CACertFile, cert.NotAfter.UTC().Format(time.DateOnly))
					return nil
				},
			},
			{
				Name:      "issue",
				Usage:     "issue NODE a new key and certificate signed by the CA (again: rotation)",
				ArgsUsage: "NODE",
				Flags: []cli.Flag{
					dir,
					&cli.BoolFlag{Name: "witness", Usage: "a witness's certificate: the cluster port only, never the data link"},
					&cli.IntFlag{Name: "days", Usage: "validity in `DAYS` (at most the CA's)", Value: int(pki.DefaultNodeValidity / (24 * time.Hour))},
				},
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "the node ID")
					if err != nil {
						return err
					}
					role := pki.RoleData
					if c.Bool("witness") {
						role = pki.RoleWitness
					}
					d := c.String("dir")
					_, statErr := os.Stat(filepath.Join(d, pki.NodeCertFile(id)))
					cert, err := pki.Issue(d, id, role, days(c))
					if err != nil {
						return err
					}
					verb := "issued"
					if statErr == nil {
						verb = "replaced"
					}
					fmt.Printf("%s %s and %s for %s %s: serial %x, valid until %s\n", verb,
						filepath.Join(d, pki.NodeCertFile(id)), filepath.Join(d, pki.NodeKeyFile(id)), role.Describe(), id,
						cert.SerialNumber, cert.NotAfter.UTC().Format(time.DateOnly))
					fmt.Printf("give %s %s, %s and %s (mode 0600); a running node takes them on SIGHUP\n",
						id, pki.CACertFile, pki.NodeCertFile(id), pki.NodeKeyFile(id))
					return nil
				},
			},
		},
	}
}

func days(c *cli.Context) time.Duration { return time.Duration(c.Int("days")) * 24 * time.Hour }
