package resource

import (
	"errors"
	"testing"
)

// FuzzParse: no input makes Parse panic; what it refuses wraps ErrInvalid,
// and what it accepts has a section for each of its nodes. The seeds are
// the shipped example and the minimal file (testdata/fuzz/FuzzParse holds
// more).
func FuzzParse(f *testing.F) {
	f.Add(example(f))
	f.Add([]byte(minimal))
	f.Add([]byte("[volume]\nsize = \"64MiB\"\n[[host]]\nid = \"a\"\n[[host]]\nid = \"a\"\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		file, err := Parse("/etc/ldmirror/r0.toml", in)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refusal %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, id := range []string{file.Hosts[0].ID, file.Hosts[1].ID, file.Witness.ID} {
			if _, err := file.Section(id); err != nil {
				t.Fatalf("accepted file has no section for %q: %v", id, err)
			}
		}
	})
}
