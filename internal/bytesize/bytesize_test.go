package bytesize

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"268435456", 268435456, ""},
		{"256MiB", 256 << 20, ""},
		{"256M", 256 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{" 10 GiB ", 10 << 30, ""},
		{"2TiB", 2 << 40, ""},
		{"4096B", 4096, ""},
		{"", 0, "is not a size"},
		{"-1", 0, "is not a size"},
		{"12XB", 0, "is not a size"},
		{"1.5GiB", 0, "is not a size"},
		{"9999999999TiB", 0, "too large"},
	} {
		got, err := Parse(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Parse(%q) = %d, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}
