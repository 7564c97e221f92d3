package resource

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// lineIndex maps a key path ("volume.size", "host[1].link",
// "agent.promote[0]") to the line it is set or its table begins on.
type lineIndex map[string]int

// indexLines parses b once for the lines of its keys and tables.
func indexLines(b []byte) (lineIndex, error) {
	idx := lineIndex{}
	arrays := map[string]int{} // elements of each array of tables so far
	var table string
	var p unstable.Parser
	p.Reset(b)
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue && e.Kind != unstable.Table && e.Kind != unstable.ArrayTable {
			continue
		}
		var parts []string
		line := 0
		for it := e.Key(); it.Next(); {
			parts = append(parts, string(it.Node().Data))
			if line == 0 {
				line = p.Shape(it.Node().Raw).Start.Line
			}
		}
		key := strings.Join(parts, ".")
		switch e.Kind {
		case unstable.Table:
			table = key
		case unstable.ArrayTable:
			n := arrays[key]
			arrays[key] = n + 1
			table = key + "[" + strconv.Itoa(n) + "]"
			idx[table] = line
		case unstable.KeyValue:
			if table != "" {
				key = table + "." + key
			}
		}
		if _, seen := idx[key]; !seen {
			idx[key] = line // an array of tables is where its first element is
		}
	}
	return idx, p.Error()
}

// line is the line of key, or of the nearest enclosing element it is
// known at: "agent.promote[1].command" set inline falls back to
// "agent.promote[1]", then "agent.promote", then "agent".
func (idx lineIndex) line(key string) int {
	for k := key; k != ""; {
		if l, ok := idx[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// decodeError turns the decoder's errors into *Errors at their lines:
// every unknown key with the keys its table knows, a value of the wrong
// type with the type wanted.
func (f *File) decodeError(err error) error {
	var sm *toml.StrictMissingError
	if errors.As(err, &sm) {
		var errs []error
		for _, de := range sm.Errors {
			line, _ := de.Position()
			key := de.Key()
			name, table := key[len(key)-1], key[:len(key)-1]
			where := "at the top of the file"
			if len(table) > 0 {
				where = "in [" + strings.Join(table, ".") + "]"
			}
			msg := fmt.Sprintf("unknown key %s", where)
			if known := knownKeys(table); known != nil {
				if s := closest(name, known); s != "" {
					msg += fmt.Sprintf("; did you mean %s?", s)
				} else {
					msg += "; known keys: " + strings.Join(known, ", ")
				}
			}
			errs = append(errs, &Error{File: f.Path, Line: line, Key: strings.Join(key, "."), Msg: msg})
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if i := strings.Index(msg, " into struct field "); i >= 0 {
			// "cannot decode TOML string into struct field resource.File.Window of type int"
			if j := strings.LastIndex(msg, " of type "); j > i {
				msg = msg[:i] + ": want " + tomlType(msg[j+len(" of type "):])
			}
		}
		return &Error{File: f.Path, Line: line, Key: strings.Join(de.Key(), "."), Msg: msg}
	}
	return &Error{File: f.Path, Msg: err.Error()}
}

// tomlType names a Go type the way the file must write it.
func tomlType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "a number without quotes"
	case goType == "bool", goType == "*bool":
		return "true or false"
	case goType == "string":
		return "a quoted string"
	case strings.HasPrefix(goType, "[]"):
		return "[[...]] tables"
	}
	return "a table"
}

// knownKeys lists the keys of the table at path, or nil if it takes any.
func knownKeys(path []string) []string {
	t := reflect.TypeFor[File]()
	for _, p := range path {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
		f, ok := fieldByTag(t, p)
		if !ok {
			return nil
		}
		t = f.Type
	}
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for i := range t.NumField() {
		if tag := tagName(t.Field(i)); tag != "" {
			keys = append(keys, tag)
		}
	}
	slices.Sort(keys)
	return keys
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if tagName(t.Field(i)) == name {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

func tagName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	return tag
}

// closest is the key of known nearest to name, if it is a plausible typo
// of it (at most 2 edits, or one is a prefix of the other).
func closest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		d := editDistance(name, k)
		if strings.HasPrefix(k, name) || strings.HasPrefix(name, k) {
			d = min(d, 2)
		}
		if d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
