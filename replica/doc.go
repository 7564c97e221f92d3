// Package replica is the secondary's apply path: it applies the primary's
// writes, trims and flushes as they arrive (docs/invariants.md, invariant
// 8), in parallel where they do not depend on each other, and keeps the
// highest contiguous applied sequence number; in async mode it persists
// its durable position in the primary's journal (journal.AppliedFile),
// which is where a journal catch-up resumes.
package replica
