#!/usr/bin/env bash
# Regenerates proto/kvpb from proto/kvd/v1/kvd.proto with pinned plugin
# versions. Needs protoc (Debian: apt-get install protobuf-compiler).
# `make proto` runs this; `make proto-check` (run by CI) fails when the
# committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" go install "$PROTOC_GEN_GO"
GOBIN="$bin" go install "$PROTOC_GEN_GO_GRPC"

protoc \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out=. --go_opt=module=github.com/kvdproject/kvd \
  --go-grpc_out=. --go-grpc_opt=module=github.com/kvdproject/kvd \
  -I proto proto/kvd/v1/kvd.proto
