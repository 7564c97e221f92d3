package node

import (
	"errors"
	"fmt"
	"slices"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
)

// ErrNotServing refuses to attach the volume on a host that does not
// export it.
var ErrNotServing = errors.New("this host does not export the volume")

// Attach binds the primary's export to a free loop device and returns the
// device. The host remembers it: when the daemon stops, DetachAttached
// detaches it.
func (n *Node) Attach() (string, error) {
	n.mu.Lock()
	exp, role := n.export, n.role
	n.mu.Unlock()
	if role != cluster.RolePrimary || exp == nil {
		return "", fmt.Errorf("%w: node %s is %s: only the primary exports the volume", ErrNotServing, n.cfg.NodeID, role)
	}
	if devs := export.LoopDevicesOf(exp.Path()); len(devs) > 0 {
		return "", fmt.Errorf("already attached as %s", devs[0])
	}
	dev, err := export.AttachLoop(exp.Path())
	if err != nil {
		return "", err
	}
	n.mu.Lock()
	n.attached = append(n.attached, dev)
	n.mu.Unlock()
	n.log.Info("attached the export to a loop device", "device", dev)
	return dev, nil
}

// DetachAttached detaches the loop devices Attach bound that are still
// bound to this host's export. One still in use (a mounted file system)
// detaches when its last user closes it; the log says so.
func (n *Node) DetachAttached() {
	n.mu.Lock()
	exp, attached := n.export, n.attached
	n.attached = nil
	n.mu.Unlock()
	if exp == nil {
		return
	}
	bound := export.LoopDevicesOf(exp.Path())
	for _, dev := range attached {
		if !slices.Contains(bound, dev) {
			continue // detached since, and its number may be another's now
		}
		deferred, err := export.DetachLoop(dev)
		switch {
		case err != nil:
			n.log.Warn("could not detach the loop device this daemon attached", "device", dev, "err", err)
		case deferred:
			n.log.Warn("loop device still in use (mounted?): it detaches when its last user closes it; its I/O fails from now on", "device", dev)
		default:
			n.log.Info("detached the loop device this daemon attached", "device", dev)
		}
	}
}
