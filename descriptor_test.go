//go:build cgo

package fidius

import "testing"

func TestInterfaceHashVector(t *testing.T) {
	got := InterfaceHash("reverse:Vec < u8 >->Vec < u8 >!raw", "name:->String")
	if got != 0xdf233d1a5936eb5c {
		t.Fatalf("got 0x%016x, want 0xdf233d1a5936eb5c", got)
	}
	if again := InterfaceHash("name:->String", "reverse:Vec < u8 >->Vec < u8 >!raw"); again != got {
		t.Fatalf("order changed the hash: 0x%016x", again)
	}
	if empty := InterfaceHash(); empty != 0xcbf29ce484222325 {
		t.Fatalf("empty interface: 0x%016x, want the FNV offset basis", empty)
	}
}

func TestSignatureString(t *testing.T) {
	cases := []struct {
		name, ret                    string
		args                         []string
		raw, streaming, clientStream bool
		want                         string
	}{
		{"reverse", "Vec < u8 >", []string{"Vec < u8 >"}, true, false, false, "reverse:Vec < u8 >->Vec < u8 >!raw"},
		{"name", "String", nil, false, false, false, "name:->String"},
		{"add", "i64", []string{"i64", "i64"}, false, false, false, "add:i64,i64->i64"},
		{"notify", "", []string{"String"}, false, false, false, "notify:String->"},
		{"ticks", "u32", nil, false, true, false, "ticks:->u32!stream"},
		{"bidi", "u8", []string{"u8"}, true, true, true, "bidi:u8->u8!raw!stream<stream"},
	}
	for _, c := range cases {
		if got := SignatureString(c.name, c.args, c.ret, c.raw, c.streaming, c.clientStream); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	if h := InterfaceHash(SignatureString("reverse", []string{"Vec < u8 >"}, "Vec < u8 >", true, false, false),
		SignatureString("name", nil, "String", false, false, false)); h != 0xdf233d1a5936eb5c {
		t.Fatalf("hash of built signatures: 0x%016x", h)
	}
}

func TestMethodIndex(t *testing.T) {
	d := &InterfaceDescriptor{Methods: []MethodDesc{{Name: "a"}, {Name: "b"}}}
	if i, ok := d.MethodIndex("b"); !ok || i != 1 {
		t.Fatalf("b: %d %v", i, ok)
	}
	if i, ok := d.MethodIndex("c"); ok || i != -1 {
		t.Fatalf("c: %d %v", i, ok)
	}
}
