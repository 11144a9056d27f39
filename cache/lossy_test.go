package cache

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kvdproject/kvd/client"
)

type allHidden struct{ cents, qty int }

type someHidden struct {
	Name  string
	price int
}

type nested struct{ Lines []someHidden }

type keyed struct{ ByID map[string]*allHidden }

type inner struct{ X int }

type embedsUnexported struct {
	inner // its exported X is promoted by JSON
	Y     int
}

type skipped struct {
	A     int
	Cache map[string]int `json:"-"`
}

type selfEncoded struct{ hidden int }

func (s selfEncoded) MarshalJSON() ([]byte, error)  { return []byte("0"), nil }
func (s *selfEncoded) UnmarshalJSON(b []byte) error { return nil }

type recursive struct {
	Next *recursive
	V    int
}

type withTime struct {
	At  time.Time
	Big *big.Int
}

func TestCheckJSONType(t *testing.T) {
	// The premise: JSON drops an unexported field without a word, and a
	// type that encodes itself keeps what it chooses.
	if b, err := json.Marshal(someHidden{Name: "a", price: 250}); err != nil || string(b) != `{"Name":"a"}` {
		t.Fatalf("json.Marshal(someHidden) = %s, %v; want the price left out", b, err)
	}
	if b, err := json.Marshal(selfEncoded{hidden: 1}); err != nil || string(b) != "0" {
		t.Fatalf("json.Marshal(selfEncoded) = %s, %v; want its own encoding", b, err)
	}
	tests := []struct {
		t        reflect.Type
		wantPath string // "" = fine
	}{
		{reflect.TypeFor[int](), ""},
		{reflect.TypeFor[string](), ""},
		{reflect.TypeFor[[]byte](), ""},
		{reflect.TypeFor[map[string]int](), ""},
		{reflect.TypeFor[allHidden](), "cache.allHidden.cents"},
		{reflect.TypeFor[*allHidden](), "*cache.allHidden.cents"},
		{reflect.TypeFor[someHidden](), "cache.someHidden.price"},
		{reflect.TypeFor[[]someHidden](), "[]cache.someHidden.price"},
		{reflect.TypeFor[nested](), "cache.nested.Lines.price"},
		{reflect.TypeFor[keyed](), "cache.keyed.ByID[...].cents"},
		{reflect.TypeFor[embedsUnexported](), ""},
		{reflect.TypeFor[skipped](), ""},
		{reflect.TypeFor[selfEncoded](), ""},
		{reflect.TypeFor[recursive](), ""},
		{reflect.TypeFor[withTime](), ""},
	}
	for _, tt := range tests {
		t.Run(tt.t.String(), func(t *testing.T) {
			err := checkJSONType(tt.t)
			if tt.wantPath == "" {
				if err != nil {
					t.Errorf("checkJSONType(%s) = %v, want nil", tt.t, err)
				}
				return
			}
			if !errors.Is(err, ErrLossyType) || !strings.Contains(err.Error(), tt.wantPath+" is unexported") {
				t.Errorf("checkJSONType(%s) = %v, want ErrLossyType naming %s", tt.t, err, tt.wantPath)
			}
		})
	}
}

// Memoize refuses a lossy type before it computes or asks the server
// anything: the caller that would have computed it gets the error too.
func TestMemoizeRefusesLossyType(t *testing.T) {
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	defer c.Close()
	ran := false
	_, err = Memoize(t.Context(), c, "price:a1", time.Minute, func(context.Context) (allHidden, error) {
		ran = true
		return allHidden{cents: 250, qty: 1}, nil
	})
	if !errors.Is(err, ErrLossyType) || !strings.Contains(err.Error(), "cache.allHidden") {
		t.Errorf("Memoize of allHidden = %v, want ErrLossyType naming cache.allHidden", err)
	}
	if ran {
		t.Errorf("Memoize of allHidden ran the function; want it refused first")
	}
	// Another codec is the caller's choice: not checked.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := Memoize(ctx, c, "price:a1", time.Minute, func(context.Context) (allHidden, error) { return allHidden{}, nil },
		WithCodec(gobLike{})); errors.Is(err, ErrLossyType) {
		t.Errorf("Memoize with WithCodec = %v, want no type check", err)
	}
}

type gobLike struct{}

func (gobLike) Marshal(v any) ([]byte, error)      { return nil, nil }
func (gobLike) Unmarshal(data []byte, v any) error { return nil }
