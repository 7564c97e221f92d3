package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/uuid"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/internal/bytesize"
	"github.com/ldmirror/ldmirror/resource"
	"github.com/ldmirror/ldmirror/volume"
	"github.com/urfave/cli/v2"
)

var dirFlag = &cli.StringFlag{
	Name:    "dir",
	Usage:   "volume `DIR` (holds meta.json, volume.img, control.sock); default: the resource file's",
	EnvVars: []string{"LDMIRROR_DIR"},
}

func initCommand() *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "create a volume: a preallocated backing file and its metadata",
		ArgsUsage: "[RESOURCE]",
		Description: "With RESOURCE, on each data host: its file gives the directory, size and UUID (the same UUID on\n" +
			"both hosts makes the two volumes twins that start in sync). Without: run it on the first host\n" +
			"without --volume-uuid; it prints the new volume's UUID. Run it on the second host with\n" +
			"--volume-uuid set to that UUID and the same --size.",
		Flags: []cli.Flag{
			dirFlag, nodeIDFlag(),
			&cli.StringFlag{Name: "size", Usage: "volume size, e.g. 256MiB, 10GiB (a multiple of the block size)"},
			&cli.IntFlag{Name: "block-size", Usage: "dirty-tracking granularity in bytes", Value: bitmap.DefaultBlockSize},
			&cli.StringFlag{Name: "volume-uuid", Usage: "`UUID` of the volume created on the peer (default: a new volume)"},
			&cli.BoolFlag{Name: "sparse", Usage: "allocate the backing file's space as it is written, not now: writes fail with ENOSPC if the host's filesystem fills"},
			&cli.BoolFlag{Name: "repair-metadata", Usage: "rebuild a damaged or lost meta.json beside the existing backing file, as a copy of the peer's volume (--volume-uuid and --size of the peer) that holds none of its data: the peer then resyncs every block here"},
		},
		Action: withResourceArg(resource.RoleData, initSettings, func(c *cli.Context, l *loadedResource) error {
			if c.String("dir") == "" || c.String("size") == "" {
				return errors.New("say which volume: a resource name, or --dir DIR and --size SIZE")
			}
			if l != nil && c.String("volume-uuid") == "" {
				return fmt.Errorf("%s: [volume] has no uuid: both hosts' volumes must have the same; add to [volume]: uuid = %q (a new one) and copy the file to every node", l.file.Path, uuid.NewString())
			}
			size, err := bytesize.Parse(c.String("size"))
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			var id uuid.UUID
			if s := c.String("volume-uuid"); s != "" {
				if id, err = uuid.Parse(s); err != nil {
					return fmt.Errorf("--volume-uuid %q: %w", s, err)
				}
			}
			if c.Bool("repair-metadata") {
				m, err := volume.Repair(c.String("dir"), size, c.Int("block-size"), id)
				if err != nil {
					return err
				}
				fmt.Printf("rebuilt the metadata of volume %s in %s: the peer resyncs every block here when it connects as primary\n", m.VolumeUUID, c.String("dir"))
				return nil
			}
			m, err := volume.Create(c.String("dir"), size, c.Int("block-size"), id, c.Bool("sparse"))
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stdout, "created volume %s: %s, %d B blocks, in %s\n", m.VolumeUUID, bytesize.Format(uint64(m.Size)), m.BlockSize, c.String("dir"))
			return nil
		}),
	}
}
