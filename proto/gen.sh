#!/usr/bin/env bash
# Regenerates proto/kvpb from proto/kvd/v1/kvd.proto with pinned versions of
# protoc and of its Go plugins. protoc is Debian bookworm's protobuf-compiler
# (apt-get install protobuf-compiler); its version is written into the
# generated files, so another version would make `make proto-check` fail for
# no change of the schema: this script refuses to run with one.
# `make proto` runs this; `make proto-check` (run by CI) fails when the
# committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_VERSION=3.21.12

PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
# Marshal, unmarshal, size and clone written out per message (kvd_vtproto.pb.go;
# the version the module graph already holds, through grpc);
# see proto/kvpb/codec.go).
PROTOC_GEN_GO_VTPROTO=github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@v0.6.1-0.20240319094008-0393e58bdf10

if ! command -v protoc >/dev/null 2>&1; then
  echo "proto/gen.sh: protoc not found; install protoc $PROTOC_VERSION (Debian bookworm: apt-get install protobuf-compiler)" >&2
  exit 1
fi
have=$(protoc --version)
if [ "$have" != "libprotoc $PROTOC_VERSION" ]; then
  echo "proto/gen.sh: protoc is \"$have\", want libprotoc $PROTOC_VERSION (Debian bookworm's protobuf-compiler);" >&2
  echo "  another version changes the header of every generated file, so proto-check would fail for nothing" >&2
  exit 1
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" go install "$PROTOC_GEN_GO"
GOBIN="$bin" go install "$PROTOC_GEN_GO_GRPC"
GOBIN="$bin" go install "$PROTOC_GEN_GO_VTPROTO"

protoc \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --plugin=protoc-gen-go-vtproto="$bin/protoc-gen-go-vtproto" \
  --go_out=. --go_opt=module=github.com/kvdproject/kvd \
  --go-grpc_out=. --go-grpc_opt=module=github.com/kvdproject/kvd \
  --go-vtproto_out=. --go-vtproto_opt=module=github.com/kvdproject/kvd,features=marshal+unmarshal+size+clone \
  -I proto proto/kvd/v1/kvd.proto
