package node

import (
	"errors"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestNormalizeArgs(t *testing.T) {
	type srv struct{ ID string }
	got := normalizeArgs([]interface{}{
		"servers", hclog.Fmt("%+v", []srv{{ID: "n1"}}),
		"err", errors.New("boom"),
		7, "seven",
		"odd",
	})
	want := []any{"servers", "[{ID:n1}]", "err", "boom", "7", "seven", "EXTRA_VALUE", "odd"}
	if len(got) != len(want) {
		t.Fatalf("normalizeArgs = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("normalizeArgs[%d] = %q, want %q", i, got[i], want[i])
		}
	}
}
