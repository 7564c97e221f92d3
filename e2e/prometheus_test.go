package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/internal/poll"
)

// httpIn is an HTTP client whose connections start in host's namespace.
func (rl *resourceLab) httpIn(host string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return rl.lab.Dial(ctx, host, network, addr)
		},
	}}
}

// get fetches url with c and returns its body, or an error unless the
// answer is 200.
func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), nil
}

// TestPrometheus: both data hosts serve metrics (metrics_listen in the
// resource file) that pass `promtool check metrics`; a real Prometheus
// server scrapes them, and its query API answers which host is primary
// and the epoch both report.
func TestPrometheus(t *testing.T) {
	requireE2E(t, "nsenter", "prometheus", "promtool")
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	rl := newResourceLab(t, "64MiB", `metrics_listen = "0.0.0.0:9942"`)
	rl.start()
	epoch := rl.statusOf("a").Epoch
	client := rl.httpIn("a")
	target := func(h string) string { return rl.lab.Addr(h) + ":9942" }

	exposition, err := get(client, "http://"+target("a")+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(exposition)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}

	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: ldmirror
    static_configs:
      - targets: [%q, %q]
`, target("a"), target("b"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	api := rl.lab.Addr("a") + ":9090"
	cmd := exec.Command("nsenter", "--net=/run/netns/"+rl.lab.NS("a"), "prometheus",
		"--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+api)
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("prometheus log:\n%s", b)
		}
		logf.Close()
	})

	// query asks Prometheus for q and returns each series' instance and
	// value.
	query := func(q string) (map[string]string, error) {
		body, err := get(client, "http://"+api+"/api/v1/query?query="+url.QueryEscape(q))
		if err != nil {
			return nil, err
		}
		var res struct {
			Status string `json:"status"`
			Data   struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  [2]any            `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(body), &res); err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, r := range res.Data.Result {
			out[r.Metric["instance"]] = fmt.Sprint(r.Value[1])
		}
		return out, nil
	}
	var primary, epochs map[string]string
	poll.Until(t, 60*time.Second, "Prometheus to have scraped both hosts", func() bool {
		var err error
		primary, err = query(`ldmirror_role{role="primary"}`)
		if err != nil || len(primary) != 2 {
			return false
		}
		epochs, err = query(`ldmirror_epoch`)
		return err == nil && len(epochs) == 2
	})
	if primary[target("a")] != "1" || primary[target("b")] != "0" {
		t.Errorf("Prometheus has ldmirror_role{role=\"primary\"} %v; want 1 for a, 0 for b", primary)
	}
	for _, h := range []string{"a", "b"} {
		if want := fmt.Sprint(epoch); epochs[target(h)] != want {
			t.Errorf("Prometheus has ldmirror_epoch %v; want %s for %s", epochs, want, h)
		}
	}
}
