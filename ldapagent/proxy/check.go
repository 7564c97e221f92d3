package proxy

import (
	"errors"
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Checks of the operations the proxy relays without acting on them
// (search, modify, compare, extended): each element has the tag, form and
// count RFC 4511 gives it. They walk the bytes the client sent instead of
// decoding them into asn1-ber packets, which cost a hundred allocations
// per search and most of the proxy's time (docs/benchmarks.md); what they
// accept, go-ldap decodes too (FuzzDecodeRequest).

// Universal tags (X.690).
const (
	tagBoolean     = 0x01
	tagInteger     = 0x02
	tagOctetString = 0x04
	tagEnumerated  = 0x0a
	tagSequence    = 0x30
	tagSet         = 0x31
)

var errTrailing = errors.New("trailing data")

// elements splits the content of a constructed element into its
// elements.
type elements struct {
	rest []byte
	err  error
}

// next returns the next element's tag and content; ok is false at the end
// or on an error (then e.err is set).
func (e *elements) next() (tag byte, content []byte, ok bool) {
	if e.err != nil || len(e.rest) == 0 {
		return 0, nil, false
	}
	tag = e.rest[0]
	content, e.rest, e.err = wire.Element(e.rest)
	return tag, content, e.err == nil
}

// want returns the content of the next element, which must have tag.
func (e *elements) want(tag byte, what string) []byte {
	t, c, ok := e.next()
	if !ok && e.err == nil {
		e.err = fmt.Errorf("no %s", what)
	}
	if ok && t != tag {
		e.err = fmt.Errorf("%s: tag 0x%02x, want 0x%02x", what, t, tag)
	}
	return c
}

// number returns the value of the next element, an INTEGER or ENUMERATED
// (tag) from 0 to max.
func (e *elements) number(tag byte, max int64, what string) int64 {
	c := e.want(tag, what)
	if e.err != nil {
		return 0
	}
	v, err := ber.ParseInt64(c)
	if err != nil || v < 0 || v > max || len(c) == 0 {
		e.err = fmt.Errorf("%s out of range", what)
	}
	return v
}

// end reports the error, or one if elements are left.
func (e *elements) end() error {
	if e.err == nil && len(e.rest) > 0 {
		e.err = errTrailing
	}
	return e.err
}

// opContent returns the content of a protocolOp element.
func opContent(op []byte) *elements {
	c, _, err := wire.Element(op)
	return &elements{rest: c, err: err}
}

// checkSearch checks a SearchRequest.
func checkSearch(op []byte) error {
	e := opContent(op)
	e.want(tagOctetString, "base object")
	e.number(tagEnumerated, 3, "scope")
	e.number(tagEnumerated, 3, "alias dereferencing")
	e.number(tagInteger, 1<<31-1, "size limit")
	e.number(tagInteger, 1<<31-1, "time limit")
	if b := e.want(tagBoolean, "typesOnly"); e.err == nil && len(b) != 1 {
		return errors.New("typesOnly")
	}
	tag, filter, ok := e.next()
	if !ok {
		return errors.Join(e.err, errors.New("no filter"))
	}
	if err := checkFilter(tag, filter, 0); err != nil {
		return fmt.Errorf("filter: %w", err)
	}
	attrs := &elements{rest: e.want(tagSequence, "attribute list")}
	for {
		tag, _, ok := attrs.next()
		if !ok {
			break
		}
		if tag != tagOctetString {
			return errors.New("attribute list")
		}
	}
	if err := attrs.end(); err != nil {
		return err
	}
	return e.end()
}

// Filter choices (RFC 4511 4.5.1): context-specific tags.
const (
	filterAnd            = 0xa0
	filterOr             = 0xa1
	filterNot            = 0xa2
	filterEquality       = 0xa3
	filterSubstrings     = 0xa4
	filterGreaterOrEqual = 0xa5
	filterLessOrEqual    = 0xa6
	filterPresent        = 0x87
	filterApprox         = 0xa8
	filterExtensible     = 0xa9
)

// maxFilterDepth bounds the nesting of and, or and not.
const maxFilterDepth = 64

// checkFilter checks a Filter element with tag and content.
func checkFilter(tag byte, content []byte, depth int) error {
	if depth > maxFilterDepth {
		return errors.New("nested too deep")
	}
	e := &elements{rest: content}
	switch tag {
	case filterAnd, filterOr:
		n := 0
		for {
			t, c, ok := e.next()
			if !ok {
				break
			}
			if err := checkFilter(t, c, depth+1); err != nil {
				return err
			}
			n++
		}
		if n == 0 && e.err == nil {
			return errors.New("empty and/or")
		}
		return e.err
	case filterNot:
		t, c, ok := e.next()
		if !ok {
			return errors.Join(e.err, errors.New("empty not"))
		}
		if err := checkFilter(t, c, depth+1); err != nil {
			return err
		}
		return e.end()
	case filterEquality, filterGreaterOrEqual, filterLessOrEqual, filterApprox:
		if d := e.want(tagOctetString, "attribute description"); e.err == nil && !attributeDescription(d) {
			return fmt.Errorf("attribute description %q", d)
		}
		e.want(tagOctetString, "assertion value")
		return e.end()
	case filterSubstrings:
		return checkSubstrings(e)
	case filterPresent:
		if !attributeDescription(content) {
			return fmt.Errorf("attribute description %q", content)
		}
		return nil
	case filterExtensible:
		return checkExtensible(e)
	}
	return fmt.Errorf("unknown filter choice 0x%02x", tag)
}

// checkSubstrings checks a SubstringFilter: a type, then at most one
// initial (first), any number of any, at most one final (last).
func checkSubstrings(e *elements) error {
	if d := e.want(tagOctetString, "attribute description"); e.err == nil && !attributeDescription(d) {
		return fmt.Errorf("attribute description %q", d)
	}
	subs := &elements{rest: e.want(tagSequence, "substrings")}
	n, last := 0, byte(0x80)
	for {
		tag, _, ok := subs.next()
		if !ok {
			break
		}
		switch {
		case tag == 0x80 && n == 0, tag == 0x81 && last != 0x82, tag == 0x82 && last != 0x82:
		default:
			return errors.New("substrings out of order")
		}
		n, last = n+1, tag
	}
	if n == 0 && subs.err == nil {
		return errors.New("no substrings")
	}
	if err := subs.end(); err != nil {
		return err
	}
	return e.end()
}

// checkExtensible checks a MatchingRuleAssertion: [1] matchingRule and [2]
// type, at least one of them, [3] matchValue, [4] dnAttributes.
func checkExtensible(e *elements) error {
	tag, c, ok := e.next()
	named := false
	for _, optional := range []byte{0x81, 0x82} { // matchingRule, type
		if ok && tag == optional {
			if !attributeDescription(c) {
				return fmt.Errorf("matching rule or type %q", c)
			}
			named = true
			tag, c, ok = e.next()
		}
	}
	if !ok || tag != 0x83 || !named {
		return errors.Join(e.err, errors.New("matching rule assertion"))
	}
	if tag, c, ok := e.next(); ok && (tag != 0x84 || len(c) != 1) {
		return errors.New("dnAttributes")
	}
	return e.end()
}

// checkModify checks a ModifyRequest.
func checkModify(op []byte) error {
	e := opContent(op)
	e.want(tagOctetString, "object")
	changes := &elements{rest: e.want(tagSequence, "changes")}
	for {
		tag, c, ok := changes.next()
		if !ok {
			break
		}
		if tag != tagSequence {
			return errors.New("change")
		}
		ch := &elements{rest: c}
		ch.number(tagEnumerated, 3, "change operation")
		if err := checkAttribute(ch.want(tagSequence, "modification")); err != nil {
			return err
		}
		if err := ch.end(); err != nil {
			return err
		}
	}
	if err := changes.end(); err != nil {
		return err
	}
	return e.end()
}

// checkAttribute checks the content of a PartialAttribute.
func checkAttribute(content []byte) error {
	a := &elements{rest: content}
	a.want(tagOctetString, "attribute type")
	vals := &elements{rest: a.want(tagSet, "values")}
	for {
		tag, _, ok := vals.next()
		if !ok {
			break
		}
		if tag != tagOctetString {
			return errors.New("attribute value")
		}
	}
	if err := vals.end(); err != nil {
		return err
	}
	return a.end()
}

// checkCompare checks a CompareRequest.
func checkCompare(op []byte) error {
	e := opContent(op)
	e.want(tagOctetString, "entry")
	ava := &elements{rest: e.want(tagSequence, "attribute value assertion")}
	ava.want(tagOctetString, "attribute description")
	ava.want(tagOctetString, "assertion value")
	if err := ava.end(); err != nil {
		return err
	}
	return e.end()
}

// extendedName checks an ExtendedRequest and returns its name.
func extendedName(op []byte) (string, error) {
	e := opContent(op)
	name := e.want(0x80, "request name")
	if tag, _, ok := e.next(); ok && tag != 0x81 {
		return "", errors.New("request value")
	}
	if err := e.end(); err != nil {
		return "", err
	}
	return string(name), nil
}

// attributeDescription reports whether b has the characters of an
// AttributeDescription or a matching rule (RFC 4512 2.5: a descriptor or
// numeric OID, with ;options): letters, digits, hyphens, dots and
// semicolons, starting with a letter or digit. A filter is relayed as the
// client sent it, so this is not for the server's sake but for the
// filter's: go-ldap reads such a filter back the same (another character,
// such as "&", would read as filter syntax).
func attributeDescription(b []byte) bool {
	if len(b) == 0 || !alnum(b[0]) {
		return false
	}
	for _, x := range b {
		if !alnum(x) && x != '-' && x != '.' && x != ';' {
			return false
		}
	}
	return true
}

func alnum(x byte) bool {
	return 'a' <= x && x <= 'z' || 'A' <= x && x <= 'Z' || '0' <= x && x <= '9'
}
