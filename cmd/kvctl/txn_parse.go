package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kvdproject/kvd/client"
)

// txnSpec is a transaction as kvctl txn reads it, in the text or the JSON
// form (docs/kvctl.md "Transactions").
type txnSpec struct {
	compares []client.Cmp
	success  []client.Op
	failure  []client.Op
}

// ---------------------------------------------------------------------------
// The text form: compare lines, a blank line, success op lines, a blank
// line, failure op lines (etcdctl's shape). Lines whose first non-blank
// character is '#' are comments. Blank lines after the failure ops are
// ignored.

// parseTxnText reads the text form. Errors name the line.
func parseTxnText(r io.Reader) (*txnSpec, error) {
	spec := &txnSpec{}
	br := bufio.NewReader(r)
	section := 0 // 0 compares, 1 success, 2 failure, 3 after them
	for n := 1; ; n++ {
		line, err := br.ReadString('\n')
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		if line == "" && err == io.EOF {
			return spec, nil
		}
		line = strings.TrimRight(line, "\r\n")
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "#"):
		case trimmed == "":
			if section < 3 {
				section++
			}
		case section == 0:
			c, perr := parseCompareLine(line)
			if perr != nil {
				return nil, fmt.Errorf("line %d: %w", n, perr)
			}
			spec.compares = append(spec.compares, c)
		case section == 3:
			return nil, fmt.Errorf("line %d: %q after the failure ops: a transaction is compares, a blank line, success ops, a blank line, failure ops", n, trimmed)
		default:
			op, perr := parseOpLine(line)
			if perr != nil {
				return nil, fmt.Errorf("line %d: %w", n, perr)
			}
			if section == 1 {
				spec.success = append(spec.success, op)
			} else {
				spec.failure = append(spec.failure, op)
			}
		}
		if err == io.EOF {
			return spec, nil
		}
	}
}

// lexer reads words with shell-like quoting: 'single quotes' keep every
// character, "double quotes" let \" and \\ through, and outside quotes a
// backslash escapes the next character. Words are separated by blanks.
type lexer struct {
	s string
	i int
}

func (l *lexer) skipBlanks() {
	for l.i < len(l.s) && (l.s[l.i] == ' ' || l.s[l.i] == '\t') {
		l.i++
	}
}

func (l *lexer) done() bool { l.skipBlanks(); return l.i >= len(l.s) }

// word reads one word; an unquoted character in stop also ends it.
// quoted reports whether any of it was quoted (so "" is a word, not
// nothing).
func (l *lexer) word(stop string) (w string, quoted bool, err error) {
	l.skipBlanks()
	var b strings.Builder
	for l.i < len(l.s) {
		ch := l.s[l.i]
		switch {
		case ch == ' ' || ch == '\t' || strings.IndexByte(stop, ch) >= 0:
			return b.String(), quoted, nil
		case ch == '\'':
			end := strings.IndexByte(l.s[l.i+1:], '\'')
			if end < 0 {
				return "", false, fmt.Errorf("column %d: unterminated ' quote", l.i+1)
			}
			b.WriteString(l.s[l.i+1 : l.i+1+end])
			l.i += end + 2
			quoted = true
		case ch == '"':
			start := l.i
			l.i++
			for {
				if l.i >= len(l.s) {
					return "", false, fmt.Errorf("column %d: unterminated \" quote", start+1)
				}
				c := l.s[l.i]
				if c == '"' {
					l.i++
					break
				}
				if c == '\\' && l.i+1 < len(l.s) && (l.s[l.i+1] == '"' || l.s[l.i+1] == '\\') {
					c = l.s[l.i+1]
					l.i++
				}
				b.WriteByte(c)
				l.i++
			}
			quoted = true
		case ch == '\\' && l.i+1 < len(l.s):
			b.WriteByte(l.s[l.i+1])
			l.i += 2
		default:
			b.WriteByte(ch)
			l.i++
		}
	}
	return b.String(), quoted, nil
}

// words splits s into shell-like words.
func words(s string) ([]string, error) {
	l := &lexer{s: s}
	var out []string
	for !l.done() {
		w, _, err := l.word("")
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// txnTargets are the compare targets of both forms, by name.
var txnTargets = map[string]func([]byte) client.CmpTarget{
	"version": client.Version,
	"ver":     client.Version,
	"value":   client.Value,
	"val":     client.Value,
	"create":  client.CreateIndex,
	"mod":     client.ModIndex,
	"exists":  client.Exists,
	"token":   client.LockToken,
}

const txnTargetNames = "version, value, create, mod, exists or token"

// txnCompare makes a compare from its parts as both forms give them: the
// target's name, the key, the operator and the value as text (a number
// for version, create, mod and token; true or false for exists).
func txnCompare(target string, key []byte, op, value string) (client.Cmp, error) {
	mk, ok := txnTargets[target]
	if !ok {
		return client.Cmp{}, fmt.Errorf("compare target %q: want %s", target, txnTargetNames)
	}
	if len(key) == 0 {
		return client.Cmp{}, fmt.Errorf("%s(\"\"): the key is empty", target)
	}
	var v any = value
	switch target {
	case "value", "val":
	case "exists":
		b, err := strconv.ParseBool(value)
		if err != nil {
			return client.Cmp{}, fmt.Errorf("exists(%q): %q: want true or false", key, value)
		}
		v = b
	default:
		n, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			return client.Cmp{}, fmt.Errorf("%s(%q): %q: want a non-negative integer", target, key, value)
		}
		v = n
	}
	c := client.Compare(mk(key), op, v)
	if err := c.Err(); err != nil {
		return client.Cmp{}, fmt.Errorf("%s(%q): %w", target, key, err)
	}
	return c, nil
}

// parseCompareLine parses TARGET("KEY") OP "VALUE".
func parseCompareLine(line string) (client.Cmp, error) {
	const want = `want a compare such as version("KEY") = "3"`
	l := &lexer{s: line}
	l.skipBlanks()
	start := l.i
	for l.i < len(l.s) && (l.s[l.i] >= 'a' && l.s[l.i] <= 'z' || l.s[l.i] >= 'A' && l.s[l.i] <= 'Z' || l.s[l.i] == '_') {
		l.i++
	}
	target := strings.ToLower(l.s[start:l.i])
	if target == "" {
		return client.Cmp{}, fmt.Errorf("%q: %s", strings.TrimSpace(line), want)
	}
	if _, ok := txnTargets[target]; !ok {
		return client.Cmp{}, fmt.Errorf("compare target %q: want %s (%s)", target, txnTargetNames, want)
	}
	l.skipBlanks()
	if l.i >= len(l.s) || l.s[l.i] != '(' {
		return client.Cmp{}, fmt.Errorf("column %d: want ( after %s", l.i+1, target)
	}
	l.i++
	key, _, err := l.word(")")
	if err != nil {
		return client.Cmp{}, err
	}
	l.skipBlanks()
	if l.i >= len(l.s) || l.s[l.i] != ')' {
		return client.Cmp{}, fmt.Errorf("column %d: want ) after the key of %s(...)", l.i+1, target)
	}
	l.i++
	l.skipBlanks()
	opStart := l.i
	for l.i < len(l.s) && strings.IndexByte("=!<>", l.s[l.i]) >= 0 {
		l.i++
	}
	op := l.s[opStart:l.i]
	if op == "" {
		return client.Cmp{}, fmt.Errorf("column %d: want an operator (=, !=, < or >) after %s(%q)", l.i+1, target, key)
	}
	value, quoted, err := l.word("")
	if err != nil {
		return client.Cmp{}, err
	}
	if value == "" && !quoted {
		return client.Cmp{}, fmt.Errorf("column %d: want a value after %s(%q) %s (\"\" for an empty one)", l.i+1, target, key, op)
	}
	if !l.done() {
		return client.Cmp{}, fmt.Errorf("column %d: unexpected %q after the value (quote a value with blanks)", l.i+1, l.s[l.i:])
	}
	return txnCompare(target, []byte(key), op, value)
}

// parseOpLine parses one op: put KEY VALUE [--ttl D] [--session ID]
// [--if-absent], del KEY, del --prefix PREFIX, get KEY. "--" ends the
// flags (for a key or value that starts with "--").
func parseOpLine(line string) (client.Op, error) {
	w, err := words(line)
	if err != nil {
		return client.Op{}, err
	}
	name, rest := w[0], w[1:]
	var (
		args                     []string
		ttl                      time.Duration
		session                  uint64
		ifAbsent, prefix, noFlag bool
	)
	allowed := map[string][]string{"put": {"--ttl", "--session", "--if-absent"}, "del": {"--prefix"}, "get": nil}
	if name == "delete" {
		name = "del"
	}
	flags, ok := allowed[name]
	if !ok {
		return client.Op{}, fmt.Errorf("op %q: want put, del or get", name)
	}
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if noFlag || !strings.HasPrefix(a, "--") {
			args = append(args, a)
			continue
		}
		if a == "--" {
			noFlag = true
			continue
		}
		flag, val, hasVal := strings.Cut(a, "=")
		known := false
		for _, f := range flags {
			known = known || f == flag
		}
		if !known {
			return client.Op{}, fmt.Errorf("%s: unknown flag %s (%s takes %s)", name, flag, name, orNone(flags))
		}
		takesValue := flag == "--ttl" || flag == "--session"
		switch {
		case takesValue && !hasVal:
			if i+1 >= len(rest) {
				return client.Op{}, fmt.Errorf("%s: %s needs a value", name, flag)
			}
			i++
			val = rest[i]
		case !takesValue && hasVal:
			return client.Op{}, fmt.Errorf("%s: %s takes no value", name, flag)
		}
		switch flag {
		case "--ttl":
			if ttl, err = time.ParseDuration(val); err != nil || ttl < 0 {
				return client.Op{}, fmt.Errorf("put: --ttl %q: want a duration such as 30s", val)
			}
		case "--session":
			if session, err = strconv.ParseUint(val, 10, 64); err != nil || session == 0 {
				return client.Op{}, fmt.Errorf("put: --session %q: want a session id (a positive integer)", val)
			}
		case "--if-absent":
			ifAbsent = true
		case "--prefix":
			prefix = true
		}
	}
	if len(args) > 0 && args[0] == "" && !prefix {
		return client.Op{}, fmt.Errorf("%s: the key is empty (del --prefix \"\" is every key)", name)
	}
	switch name {
	case "put":
		if len(args) != 2 {
			return client.Op{}, fmt.Errorf("put: want KEY VALUE, got %d argument(s) (quote a value with blanks)", len(args))
		}
		return txnPut([]byte(args[0]), []byte(args[1]), ttl, session, ifAbsent), nil
	case "del":
		if len(args) != 1 {
			return client.Op{}, fmt.Errorf("del: want KEY (or --prefix PREFIX), got %d argument(s)", len(args))
		}
		if prefix {
			return client.OpDeletePrefix([]byte(args[0])), nil
		}
		return client.OpDelete([]byte(args[0])), nil
	default:
		if len(args) != 1 {
			return client.Op{}, fmt.Errorf("get: want KEY, got %d argument(s)", len(args))
		}
		return client.OpGet([]byte(args[0])), nil
	}
}

func orNone(flags []string) string {
	if len(flags) == 0 {
		return "no flags"
	}
	return strings.Join(flags, ", ")
}

// txnPut makes a put op of either form.
func txnPut(key, value []byte, ttl time.Duration, session uint64, ifAbsent bool) client.Op {
	var opts []client.OpOption
	if ttl > 0 {
		opts = append(opts, client.WithTTL(ttl))
	}
	if session != 0 {
		opts = append(opts, client.WithSession(session))
	}
	if ifAbsent {
		opts = append(opts, client.WithIfAbsent())
	}
	return client.OpPut(key, value, opts...)
}

// ---------------------------------------------------------------------------
// The JSON form (-i json):
//
//	{"compare": [{"target": "version", "key": "k", "op": "=", "number": 3}, ...],
//	 "success": [{"op": "put", "key": "k", "value": "v", "ttl_ms": 30000}, ...],
//	 "failure": [{"op": "get", "key": "k"}, ...]}
//
// Keys and values are strings, or base64 in key_base64 / value_base64.

type txnJSON struct {
	Compare []cmpJSON `json:"compare"`
	Success []opJSON  `json:"success"`
	Failure []opJSON  `json:"failure"`
}

type cmpJSON struct {
	Target      string  `json:"target"`
	Key         *string `json:"key"`
	KeyBase64   *string `json:"key_base64"`
	Op          string  `json:"op"`
	Number      *uint64 `json:"number"`
	Value       *string `json:"value"`
	ValueBase64 *string `json:"value_base64"`
	Exists      *bool   `json:"exists"`
}

type opJSON struct {
	Op          string  `json:"op"`
	Key         *string `json:"key"`
	KeyBase64   *string `json:"key_base64"`
	Value       *string `json:"value"`
	ValueBase64 *string `json:"value_base64"`
	TTLMs       int64   `json:"ttl_ms"`
	Session     uint64  `json:"session"`
	IfAbsent    bool    `json:"if_absent"`
	Prefix      bool    `json:"prefix"`
}

// parseTxnJSON reads the JSON form. Errors name the element (compare[1],
// success[0].value, ...), or for malformed JSON the line and column.
func parseTxnJSON(r io.Reader) (*txnSpec, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc txnJSON
	if err := dec.Decode(&doc); err != nil {
		return nil, jsonError(data, err)
	}
	rest := dec.InputOffset()
	if trailing := bytes.TrimLeft(data[rest:], " \t\r\n"); len(trailing) > 0 {
		return nil, fmt.Errorf("%s: more after the transaction's object", lineCol(data, int64(len(data)-len(trailing))))
	}
	spec := &txnSpec{}
	for i, c := range doc.Compare {
		cmp, err := c.compare()
		if err != nil {
			return nil, fmt.Errorf("compare[%d]: %w", i, err)
		}
		spec.compares = append(spec.compares, cmp)
	}
	if spec.success, err = opsJSON("success", doc.Success); err != nil {
		return nil, err
	}
	if spec.failure, err = opsJSON("failure", doc.Failure); err != nil {
		return nil, err
	}
	return spec, nil
}

func (c cmpJSON) compare() (client.Cmp, error) {
	key, err := bytesField("key", c.Key, c.KeyBase64, true)
	if err != nil {
		return client.Cmp{}, err
	}
	if _, ok := txnTargets[c.Target]; !ok {
		return client.Cmp{}, fmt.Errorf("target %q: want %s", c.Target, txnTargetNames)
	}
	hasValue := c.Value != nil || c.ValueBase64 != nil
	var value string
	switch c.Target {
	case "value", "val":
		if c.Number != nil || c.Exists != nil || !hasValue {
			return client.Cmp{}, errors.New(`target value: want "value" (or "value_base64") and nothing else`)
		}
		b, err := bytesField("value", c.Value, c.ValueBase64, true)
		if err != nil {
			return client.Cmp{}, err
		}
		value = string(b)
	case "exists":
		if c.Number != nil || hasValue || c.Exists == nil {
			return client.Cmp{}, errors.New(`target exists: want "exists": true or false, and nothing else`)
		}
		value = strconv.FormatBool(*c.Exists)
	default:
		if c.Exists != nil || hasValue || c.Number == nil {
			return client.Cmp{}, fmt.Errorf(`target %s: want "number" and nothing else`, c.Target)
		}
		value = strconv.FormatUint(*c.Number, 10)
	}
	return txnCompare(c.Target, key, c.Op, value)
}

func opsJSON(branch string, in []opJSON) ([]client.Op, error) {
	var out []client.Op
	for i, o := range in {
		op, err := o.op()
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", branch, i, err)
		}
		out = append(out, op)
	}
	return out, nil
}

func (o opJSON) op() (client.Op, error) {
	key, err := bytesField("key", o.Key, o.KeyBase64, true)
	if err != nil {
		return client.Op{}, err
	}
	switch o.Op {
	case "put", "del", "delete", "get":
	default:
		return client.Op{}, fmt.Errorf("op %q: want put, del or get", o.Op)
	}
	if len(key) == 0 && !(o.Prefix && o.Op != "get") {
		return client.Op{}, fmt.Errorf("%s: the key is empty (a del with \"prefix\": true and key \"\" is every key)", o.Op)
	}
	hasValue := o.Value != nil || o.ValueBase64 != nil
	putOnly := o.TTLMs != 0 || o.Session != 0 || o.IfAbsent
	switch o.Op {
	case "put":
		if o.Prefix {
			return client.Op{}, errors.New(`put: "prefix" is for del`)
		}
		if o.TTLMs < 0 {
			return client.Op{}, fmt.Errorf("put: ttl_ms %d is negative", o.TTLMs)
		}
		value, err := bytesField("value", o.Value, o.ValueBase64, false)
		if err != nil {
			return client.Op{}, err
		}
		return txnPut(key, value, time.Duration(o.TTLMs)*time.Millisecond, o.Session, o.IfAbsent), nil
	default: // del, delete, get
		if o.Op == "get" && (hasValue || putOnly || o.Prefix) {
			return client.Op{}, errors.New(`get: takes "key" (or "key_base64") and nothing else`)
		}
		if hasValue || putOnly {
			return client.Op{}, fmt.Errorf(`%s: takes "key" (or "key_base64") and "prefix", nothing else`, o.Op)
		}
		switch {
		case o.Op == "get":
			return client.OpGet(key), nil
		case o.Prefix:
			return client.OpDeletePrefix(key), nil
		}
		return client.OpDelete(key), nil
	}
}

// bytesField takes a key or value given as text or as base64 (one of the
// two; required: one must be given).
func bytesField(name string, text, b64 *string, required bool) ([]byte, error) {
	switch {
	case text != nil && b64 != nil:
		return nil, fmt.Errorf("give %q or %q, not both", name, name+"_base64")
	case text != nil:
		return []byte(*text), nil
	case b64 != nil:
		b, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return nil, fmt.Errorf("%s_base64: %w", name, err)
		}
		return b, nil
	case required:
		return nil, fmt.Errorf("%q (or %q) is missing", name, name+"_base64")
	}
	return nil, nil
}

// jsonError says where malformed JSON went wrong.
func jsonError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		// Offset counts the bad character too.
		return fmt.Errorf("%s: %v", lineCol(data, se.Offset-1), err)
	case errors.As(err, &te):
		// Offset is just after the value: name its last character.
		return fmt.Errorf("%s: %s: want a %v, got a JSON %s", lineCol(data, te.Offset-1), te.Field, te.Type, te.Value)
	case errors.Is(err, io.EOF):
		return errors.New("no JSON on stdin: want an object with compare, success and failure")
	}
	return err // an unknown field: encoding/json names it
}

// lineCol names the line and column (from 1) of the byte at offset off
// (from 0) in data.
func lineCol(data []byte, off int64) string {
	off = min(max(off, 0), int64(len(data)))
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n') // LastIndexByte is -1 on line 1
	return fmt.Sprintf("line %d, column %d", line, col)
}
