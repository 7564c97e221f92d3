package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
)

type fioLat struct {
	Percentile map[string]float64 `json:"percentile"`
}

type fioDir struct {
	IOs  float64 `json:"total_ios"`
	IOPS float64 `json:"iops"`
	BW   float64 `json:"bw_bytes"`
	Clat fioLat  `json:"clat_ns"`
}

// fio runs one job on dev and returns its figures.
func (b *bench) fio(dev string, w workload) (result, error) {
	args := []string{"--name=" + w.name, "--filename=" + dev, "--ioengine=libaio", "--direct=1",
		fmt.Sprintf("--runtime=%dms", b.runtime.Milliseconds()), "--output-format=json"}
	if b.ioSize != "" {
		// A burst: what a writer gets while the async journal has room.
		args = append(args, "--io_size="+b.ioSize)
	} else {
		args = append(args, "--time_based", fmt.Sprintf("--ramp_time=%dms", b.ramp.Milliseconds()))
	}
	args = append(args, w.args...)
	cmd := exec.Command("fio", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return result{}, fmt.Errorf("fio: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var rep struct {
		Jobs []struct {
			Read, Write fioDir
			Sync        struct {
				Lat fioLat `json:"lat_ns"`
			} `json:"sync"`
		} `json:"jobs"`
	}
	// fio may print warnings before the JSON.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Jobs) == 0 {
		return result{}, fmt.Errorf("parse fio output: %v", err)
	}
	j := rep.Jobs[0]
	us := func(l fioLat, p string) float64 { return l.Percentile[p] / 1e3 }
	return result{
		IOPS:      j.Read.IOPS + j.Write.IOPS,
		ops:       j.Read.IOs + j.Write.IOs,
		MBps:      (j.Read.BW + j.Write.BW) / 1e6,
		P50us:     us(j.Write.Clat, "50.000000"),
		P99us:     us(j.Write.Clat, "99.000000"),
		SyncP50us: us(j.Sync.Lat, "50.000000"),
		SyncP99us: us(j.Sync.Lat, "99.000000"),
	}, nil
}
