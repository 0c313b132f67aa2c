package vmm

import (
	"encoding/json"
	"testing"

	"github.com/mergenhq/mergen/internal/config"
)

// BenchmarkAcceleratorDecode: what reading a new QEMU VM's accelerator
// from its vm.json costs (every create answers with it), against decoding
// the whole document, as it was done before.
func BenchmarkAcceleratorDecode(b *testing.B) {
	doc, err := newQEMU(config.Driver{QEMUAccel: "tcg"}).Config(testSpec(b, b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("stop-at-the-two-fields", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if a, _, err := decodeAccel(doc); err != nil || a.accel != "tcg" {
				b.Fatal(a, err)
			}
		}
	})
	b.Run("baseline-whole-document", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var cfg qemuConfig
			if err := json.Unmarshal(doc, &cfg); err != nil || cfg.Accel != "tcg" {
				b.Fatal(cfg.Accel, err)
			}
		}
	})
}
