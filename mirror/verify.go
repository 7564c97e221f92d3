package mirror

import (
	"context"
	"fmt"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/transport"
)

// Verify compares every block with the peer by keyed digest, online (see
// resync.Verify). Blocks that differ are marked out of sync (and durably so
// in the write intent log) for the next Resync to repair; Verify returns
// them.
func (m *Mirror) Verify(ctx context.Context, progress resync.VerifyProgress) (*roaring.Bitmap, error) {
	s := m.session()
	if s == nil {
		return nil, fmt.Errorf("verify: %w", transport.ErrDisconnected)
	}
	return resync.Verify(ctx, resyncSource{m, s}, s, progress, m.log)
}
