package retrier

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// holdSignals catches cfg.HoldSignals; see Config.HoldSignals.
func (s *Session) holdSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, s.cfg.HoldSignals...)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer signal.Stop(ch)
		for {
			var sig os.Signal
			select {
			case <-s.done:
				return
			case sig = <-ch:
			}
			s.gate.Close()
			n := s.gate.InFlight()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
			err := s.gate.Wait(ctx)
			cancel()
			if err != nil {
				s.log.Warn("signal: calls still in flight after drain timeout", "signal", sig, "drain", s.cfg.DrainTimeout)
			} else {
				s.log.Info("signal held until calls completed", "signal", sig, "calls", n)
			}
			if s.cfg.OnSignal != nil {
				s.cfg.OnSignal(sig)
				s.gate.Open()
				continue
			}
			signal.Stop(ch)
			if ss, ok := sig.(syscall.Signal); ok {
				_ = syscall.Kill(os.Getpid(), ss)
			}
			return
		}
	}()
}
