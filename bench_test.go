//go:build cgo

package fidius

import (
	"context"
	"fmt"
	"testing"
)

// Benchmarks of the call path. bench/ compares them with the CPython floor
// and a subprocess worker; here they show time and allocations per call.

func benchParallel(b *testing.B, goroutines int, call func() error) {
	b.Helper()
	b.ReportAllocs()
	if goroutines == 1 {
		for b.Loop() {
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(goroutines) // per GOMAXPROCS; close enough on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkCallJSONNoop(b *testing.B) {
	h := greeter(b)
	noop := idx(b, h, "noop")
	for _, g := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			benchParallel(b, g, func() error { _, err := h.CallJSON(ctx, noop, nil); return err })
		})
	}
}

// BenchmarkCallJSONNoopCancellable is a call under a context that can end
// (and does not): the call runs on a goroutine of its own, so that its
// caller can leave when the context ends.
func BenchmarkCallJSONNoopCancellable(b *testing.B) {
	h := greeter(b)
	noop := idx(b, h, "noop")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, g := range []int{1, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			benchParallel(b, g, func() error { _, err := h.CallJSON(cctx, noop, nil); return err })
		})
	}
}

func BenchmarkCallJSONGreet(b *testing.B) {
	h := greeter(b)
	greet := idx(b, h, "greet")
	in := []byte(`["World"]`)
	for _, g := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			benchParallel(b, g, func() error { _, err := h.CallJSON(ctx, greet, in); return err })
		})
	}
}

func BenchmarkCallGreet(b *testing.B) {
	h := greeter(b)
	greet := idx(b, h, "greet")
	for _, g := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			benchParallel(b, g, func() error { _, err := Call[string](ctx, h, greet, "World"); return err })
		})
	}
}

func BenchmarkCallRawEcho(b *testing.B) {
	h := greeter(b)
	echo := idx(b, h, "echo_raw")
	for _, size := range []int{64, 1 << 20} {
		in := make([]byte, size)
		for _, g := range []int{1, 2, 8} {
			b.Run(fmt.Sprintf("size=%d/goroutines=%d", size, g), func(b *testing.B) {
				b.SetBytes(int64(size))
				benchParallel(b, g, func() error { _, err := h.CallRaw(ctx, echo, in); return err })
			})
		}
	}
}
