// Package ctl is the control socket of an ldmirror process: every route
// the CLI uses, one client, and one table of error codes that carries the
// sentinel errors of node and cluster across the socket, so errors.Is
// works on the CLI's side as on the daemon's.
//
// The socket is HTTP with JSON bodies on a unix socket of mode 0600 in the
// volume (or member data) directory:
//
//	GET  /status                  node.Status
//	POST /verify                  node.VerifyResult
//	POST /resync?full=1&checksum=1 node.ResyncResult
//	POST /swap                    SwapResult
//	POST /agent/retry             agent.Status
//	POST /attach                  AttachResult
//	GET  /events?now=1&progress_ms=N  events.Event, one a line, as they come
//	POST /stop                    {}: the process stops (as on SIGTERM)
//	POST /reload                  Reload (as on SIGHUP)
//	GET  /cluster?consistent=1&timeout_ms=N  ClusterView
//	POST /cluster/{bootstrap,join,remove,promote,demote}  Request → Reply
//
// A refusal is {"code": ..., "error": ...} with a 4xx or 5xx status; the
// codes are listed in errors.go. A data host serves the node routes and,
// with a control plane, the cluster routes; a witness only the latter,
// /stop and /reload.
package ctl
