//go:build failpoints

package failpoint

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    map[string]int
		wantErr bool
	}{
		{in: "", want: map[string]int{}},
		{in: "a", want: map[string]int{"a": 1}},
		{in: "a@3, b", want: map[string]int{"a": 3, "b": 1}},
		{in: "a@0", wantErr: true},
		{in: "a@x", wantErr: true},
	} {
		p, err := parse(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("parse(%q): err %v, want error %v", tc.in, err, tc.wantErr)
		}
		if err != nil {
			continue
		}
		if len(p.fire) != len(tc.want) {
			t.Fatalf("parse(%q) = %v, want %v", tc.in, p.fire, tc.want)
		}
		for k, v := range tc.want {
			if p.fire[k] != v {
				t.Fatalf("parse(%q) = %v, want %v", tc.in, p.fire, tc.want)
			}
		}
	}
}

func TestReachedFiresOnTheNthHit(t *testing.T) {
	p, _ := parse("x@3")
	var fired []int
	for i := 1; i <= 5; i++ {
		if p.reached("x") {
			fired = append(fired, i)
		}
		if p.reached("y") {
			t.Fatal("an unarmed point fired")
		}
	}
	if len(fired) != 1 || fired[0] != 3 {
		t.Fatalf("x@3 fired at hits %v, want [3]", fired)
	}
}
