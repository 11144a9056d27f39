package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvdproject/kvd/proto/kvpb"
)

func init() { subcommands = append(subcommands, newTxnCommand) }

func newTxnCommand(a *app) *cobra.Command {
	var input string
	cmd := &cobra.Command{
		Use:   "txn",
		Short: "Run a transaction read from stdin: compares, then success ops, then failure ops",
		Long: `Read a transaction from stdin and run it as one command: if every compare
holds the success ops run, else the failure ops, all in one log entry.

The text form (the default) is etcdctl's: compare lines, a blank line,
success op lines, a blank line, failure op lines. Lines starting with # are
comments.

  Compares:  TARGET("KEY") OP "VALUE"
             TARGET: version, value, create (index), mod (index),
                     exists ("true"/"false"), token (a lock's fencing token)
             OP: =  !=  <  >
  Ops:       put KEY VALUE [--ttl 30s] [--session ID] [--if-absent]
             del KEY
             del --prefix PREFIX
             get KEY

Keys and values are quoted like a shell's words: 'single quotes' keep every
character, "double quotes" allow \" and \\, a backslash outside quotes
escapes one character.

-i json reads {"compare": [...], "success": [...], "failure": [...]}
instead (see docs/kvctl.md).

Output: SUCCESS or FAILURE (the branch that ran), then one line per op.
The failure branch running is not an error: kvctl exits 0 either way (read
the first line, or "succeeded" with -o json). Exactly-once like put; exit 6
when the outcome is unknown, 2 when the input does not parse.`,
		Example: `  kvctl txn <<'EOF'
  value("stock/sku-42") = "3"

  put stock/sku-42 2
  put "orders/1001" sku-42

  get stock/sku-42
  EOF

  kvctl txn -i json < txn.json -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				spec *txnSpec
				err  error
			)
			switch input {
			case "text":
				spec, err = parseTxnText(a.stdin)
			case "json":
				spec, err = parseTxnJSON(a.stdin)
			default:
				return &usageError{fmt.Sprintf("-i: want text or json, got %q", input)}
			}
			if err != nil {
				return &usageError{"txn: " + err.Error()}
			}
			c, ctx, cancel, err := a.request(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			txn := c.Txn().If(spec.compares...).Then(spec.success...).Else(spec.failure...)
			req, err := txn.Request()
			if err != nil {
				return &usageError{"txn: " + err.Error()}
			}
			resp, err := txn.Commit(ctx)
			if err != nil {
				return fmt.Errorf("txn: %w", err)
			}
			ops := req.GetSuccess()
			if !resp.GetSucceeded() {
				ops = req.GetFailure()
			}
			return a.printTxn(resp, ops)
		},
	}
	cmd.Flags().StringVarP(&input, "input", "i", "text", "input format: text (etcdctl's) or json")
	return cmd
}

// printTxn prints the branch that ran and the result of each of its ops.
func (a *app) printTxn(resp *kvpb.TxnResponse, ops []*kvpb.TxnOp) error {
	h := resp.GetHeader()
	results := resp.GetResults()
	if a.json() {
		out := []*object{}
		for i, r := range results {
			out = append(out, txnResultObject(r, opAt(ops, i), h))
		}
		return a.printJSON(response(h).set("succeeded", resp.GetSucceeded()).set("results", out))
	}
	if resp.GetSucceeded() {
		fmt.Fprintln(a.stdout, "SUCCESS")
	} else {
		fmt.Fprintln(a.stdout, "FAILURE")
	}
	for i, r := range results {
		fmt.Fprintf(a.stdout, "%s: %s\n", txnOpText(opAt(ops, i)), txnResultText(r))
	}
	return nil
}

// opAt is op i of the branch that ran (nil if the answer has more results
// than the branch had ops, which a correct server never sends).
func opAt(ops []*kvpb.TxnOp, i int) *kvpb.TxnOp {
	if i < len(ops) {
		return ops[i]
	}
	return nil
}

// txnOpText names an op the way the text form writes it.
func txnOpText(op *kvpb.TxnOp) string {
	switch {
	case op.GetPut() != nil:
		return "put " + printable(op.GetPut().GetKey())
	case op.GetDelete() != nil && op.GetDelete().GetPrefix():
		return "del --prefix " + printable(op.GetDelete().GetKey())
	case op.GetDelete() != nil:
		return "del " + printable(op.GetDelete().GetKey())
	case op.GetGet() != nil:
		return "get " + printable(op.GetGet().GetKey())
	}
	return "?"
}

// txnResultText is an op's result as put, del and get print it.
func txnResultText(r *kvpb.TxnOpResult) string {
	switch {
	case r.GetPut() != nil:
		kv := r.GetPut().GetKv()
		return fmt.Sprintf("OK (version %d, index %d)", kv.GetVersion(), kv.GetModIndex())
	case r.GetDelete() != nil:
		return fmt.Sprint(r.GetDelete().GetDeleted())
	case r.GetGet() != nil:
		kv := r.GetGet().GetKv()
		switch {
		case r.GetValueUnavailable():
			return fmt.Sprintf("(value unavailable: the key changed since the first answer; version %d)", kv.GetVersion())
		case kv == nil:
			return "(not found)"
		}
		return printable(kv.GetValue())
	}
	return "?"
}

// txnResultObject is an op's result in -o json: "op" (put, del, get), the
// key ("prefix" true for a delete-prefix), then the response's fields.
func txnResultObject(r *kvpb.TxnOpResult, op *kvpb.TxnOp, h *kvpb.ResponseHeader) *object {
	o := part(h)
	switch {
	case r.GetPut() != nil:
		o.set("op", "put").bytes("key", op.GetPut().GetKey()).set("kv", kvObject(r.GetPut().GetKv(), h))
	case r.GetDelete() != nil:
		o.set("op", "del").bytes("key", op.GetDelete().GetKey())
		if op.GetDelete().GetPrefix() {
			o.set("prefix", true)
		}
		o.set("deleted", r.GetDelete().GetDeleted())
	case r.GetGet() != nil:
		o.set("op", "get").bytes("key", op.GetGet().GetKey())
		kv := r.GetGet().GetKv()
		o.set("found", kv != nil)
		if kv != nil {
			o.set("kv", kvObject(kv, h))
		}
		if r.GetValueUnavailable() {
			o.set("value_unavailable", true)
		}
	}
	return o
}
