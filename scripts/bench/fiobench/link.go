package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/internal/wanlink"
)

// The RTT sweep (issue 19) runs each mirrored configuration once per
// round trip, named config@RTT: sync@10ms is sync mirroring with the
// pair's data link through a wanlink relay that adds 10 ms of round trip.
// RTT 0 is the direct link on 127.0.0.1, no relay and no cap: the LAN of
// the other measurements, under the configuration's plain name.

// mirroredConfigs are the configurations with a data link to delay.
var mirroredConfigs = []string{"sync", "sync-plaintext", "sync-noal", "async"}

// splitRTT splits config@RTT.
func splitRTT(name string) (base string, rtt time.Duration, err error) {
	base, r, ok := strings.Cut(name, "@")
	if !ok {
		return name, 0, nil
	}
	rtt, err = parseRTT(r)
	return base, rtt, err
}

func parseRTT(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("RTT %q: want a duration such as 10ms", s)
	}
	return d, nil
}

// expandRTT names every mirrored configuration once per RTT, in the order
// of rtts, and keeps the others (passthrough, raw, qemu) once.
func expandRTT(configs []string, rtts []string) []string {
	if len(rtts) == 0 {
		return configs
	}
	var out []string
	for _, c := range configs {
		if !slices.Contains(mirroredConfigs, c) {
			out = append(out, c)
		}
	}
	for _, r := range rtts {
		for _, c := range configs {
			switch {
			case !slices.Contains(mirroredConfigs, c):
			case r == "0": // the plain name, so the LAN ratios apply
				out = append(out, c)
			default:
				out = append(out, c+"@"+r)
			}
		}
	}
	return out
}

// parseBandwidth reads a link rate such as 1Gbit, 100Mbit or 0 (no cap)
// and returns bytes per second.
func parseBandwidth(s string) (int64, error) {
	units := []struct {
		suffix string
		bits   float64
	}{{"Gbit", 1e9}, {"Mbit", 1e6}, {"kbit", 1e3}}
	if s == "0" || s == "" {
		return 0, nil
	}
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil && f > 0 {
				return int64(f * u.bits / 8), nil
			}
		}
	}
	return 0, fmt.Errorf("bandwidth %q: want a rate such as 1Gbit or 100Mbit", s)
}

// link returns the address the primary dials for a secondary at addr:
// addr itself at RTT 0, else a relay's, and how to close it.
func (b *bench) link(addr string) (string, func(), error) {
	if b.rtt == 0 {
		return addr, func() {}, nil
	}
	r, err := wanlink.Listen(addr, wanlink.Config{RTT: b.rtt, Jitter: b.jitter, Bandwidth: b.bandwidth})
	if err != nil {
		return "", nil, err
	}
	return r.Addr(), func() { r.Close() }, nil
}

// linkDesc describes the delayed link for the report.
func (b *bench) linkDesc() string {
	bw := "no cap"
	if b.bandwidth > 0 {
		bw = fmt.Sprintf("%.0f Mbit/s", float64(b.bandwidth)*8/1e6)
	}
	return fmt.Sprintf("a wanlink relay in fiobench adding the RTT (half each way), jitter ±%v, capped at %s each way", b.jitter, bw)
}
